"""`vithybrid similar` and `vithybrid duplicates`, and the search package under them.

The tiny checkpoint's weights are random, so quality is tested on planted vectors (groups whose
every pair is just above the threshold, near misses just below it, a chain) and on byte copies
of photographs; the commands run end to end on the tiny checkpoint in float32.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vithybrid_cli.cli import app
from vithybrid_cli.search.grouping import find_duplicates, group_duplicates
from vithybrid_cli.search.index import exact_neighbours
from vithybrid_cli.search.vectors import VectorsError, read_vectors

THRESHOLD = 0.9


def cli(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# ---------------------------------------------------------------------------- planted vectors


def planted(margin: float, seed: int = 0, background: int = 1500, width: int = 256):
    """(vectors, expected groups as sets of rows): groups of 2..5 whose every pair has cosine
    THRESHOLD + margin, a near-miss pair at THRESHOLD - margin, a chain A-B-C (A-B 0.96, B-C
    0.95, A-C 0.85), and random background vectors, rows shuffled."""
    rng = np.random.default_rng(seed)
    basis = iter(np.linalg.qr(rng.standard_normal((width, width)))[0].T)  # orthonormal rows
    rows, expected = [], []
    inside = THRESHOLD + margin  # pairwise: (1 - e^2) when members share a centre at 1 - e^2
    for size in (2, 3, 4, 5):
        centre = next(basis)
        members = [
            np.sqrt(inside) * centre + np.sqrt(1 - inside) * next(basis) for _ in range(size)
        ]
        expected.append(set(range(len(rows), len(rows) + size)))
        rows += members
    first, second = next(basis), next(basis)
    below = THRESHOLD - margin
    rows += [first, below * first + np.sqrt(1 - below**2) * second]  # a near miss: no group
    e1, e2, e3 = next(basis), next(basis), next(basis)
    b = 0.96 * e1 + 0.28 * e2
    y = (0.95 - 0.96 * 0.85) / 0.28
    c = 0.85 * e1 + y * e2 + np.sqrt(1 - 0.85**2 - y**2) * e3
    expected.append({len(rows), len(rows) + 1})  # A-B (0.96) is taken first; then C cannot join
    rows += [e1, b, c]
    noise = rng.standard_normal((background, width))
    rows += list(noise / np.linalg.norm(noise, axis=1, keepdims=True))
    order = rng.permutation(len(rows))
    where = {int(old): new for new, old in enumerate(order)}
    vectors = np.stack([rows[i] for i in order]).astype(np.float32) * 3.0  # not unit: cosine
    return vectors, {frozenset(where[row] for row in group) for group in expected}


def test_planted_groups_recovered_exactly_at_the_threshold(monkeypatch):
    import vithybrid_cli.search.index as index

    monkeypatch.setattr(index, "PAIR_BLOCK_ROWS", 512)  # several tiles, diagonal and not
    vectors, expected = planted(margin=2e-4)
    groups = find_duplicates(vectors, [""] * len(vectors), THRESHOLD, index="exact")
    assert {frozenset(group.rows) for group in groups} == expected
    for group in groups:
        assert group.score >= THRESHOLD and not group.exact
        assert group.rows == sorted(group.rows)


def test_planted_groups_with_the_approximate_index():
    pytest.importorskip("usearch")
    vectors, expected = planted(margin=2e-4, seed=1, background=500)
    groups = find_duplicates(vectors, [""] * len(vectors), THRESHOLD, index="approximate")
    assert {frozenset(group.rows) for group in groups} == expected


def test_complete_linkage_does_not_chain():
    # 0-1 and 1-2 are close, 0-2 is not: connected components would give {0, 1, 2}
    pairs = [(0, 1, 0.97), (1, 2, 0.96), (3, 4, 0.91), (2, 3, 0.5)]
    groups = group_duplicates(pairs, THRESHOLD)
    assert [(group.rows, group.score) for group in groups] == [([0, 1], 0.97), ([3, 4], 0.91)]
    # byte copies are one group whatever the threshold, and join others only when all pairs do
    groups = group_duplicates([(0, 5, 0.95), (5, 6, 0.95)], 0.99, copies=[[5, 6]])
    assert [(group.rows, group.score, group.exact) for group in groups] == [([5, 6], 1.0, True)]


def test_a_near_copy_joining_byte_copies_keeps_them_listed_as_copies():
    # 0 and 1 hold the same bytes; 2 is a recompression of them: one near group of three
    pairs = [(0, 1, 0.999), (0, 2, 0.96), (1, 2, 0.96), (3, 4, 0.97)]
    groups = group_duplicates(pairs, 0.95, copies=[[0, 1]])
    assert [(g.rows, g.score, g.exact, g.copies) for g in groups] == [
        ([0, 1, 2], 0.96, False, [[0, 1]]),
        ([3, 4], 0.97, False, []),
    ]
    [exact] = group_duplicates([], 0.95, copies=[[5, 6, 7]])
    assert (exact.exact, exact.copies) == (True, [[5, 6, 7]])


def test_exact_neighbours_blocked_equals_brute_force_and_ties_keep_row_order():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((500, 16)).astype(np.float32)
    base[300] = base[7] * 2  # same direction as row 7: a tie at cosine 1
    queries = base[[7, 42]]
    found = exact_neighbours(base, queries, 5, block_rows=64)
    unit = base / np.linalg.norm(base, axis=1, keepdims=True)
    scores = (unit[[7, 42]] @ unit.T).astype(np.float64)
    assert found.indices[0, :2].tolist() == [7, 300]
    assert found.indices[1].tolist() == np.argsort(-scores[1], kind="stable")[:5].tolist()
    np.testing.assert_allclose(found.scores[1], np.sort(scores[1])[::-1][:5], atol=1e-5)


# ---------------------------------------------------------------------------- vectors files


def test_vectors_files_without_paths_or_of_another_shape_are_refused(tmp_path):
    np.save(tmp_path / "v.npy", np.ones((3, 4), np.float32))
    with pytest.raises(VectorsError, match=r"v\.npy: no paths beside it \(.*v\.paths\.txt"):
        read_vectors(str(tmp_path / "v.npy"))
    (tmp_path / "v.paths.txt").write_text("a.jpg\nb.jpg\n")
    with pytest.raises(VectorsError, match=r"v\.npy: 3 vectors but 2 paths"):
        read_vectors(str(tmp_path / "v.npy"))
    np.savez(tmp_path / "w.npz", embeddings=np.ones((2, 4), np.float32))
    with pytest.raises(VectorsError, match=r"w\.npz: no 'paths' array"):
        read_vectors(str(tmp_path / "w.npz"))
    np.save(tmp_path / "t.npy", np.ones((2, 5, 4), np.float32))
    (tmp_path / "t.paths.txt").write_text("a.jpg\nb.jpg\n")
    with pytest.raises(VectorsError, match=r"t\.npy: holds arrays of shape 2x5x4"):
        read_vectors(str(tmp_path / "t.npy"))


def test_npy_rows_are_read_from_disk_as_numpy_reads_them(tmp_path):
    array = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
    np.save(tmp_path / "v.npy", array)
    (tmp_path / "v.paths.txt").write_text("".join(f"{i}.jpg\n" for i in range(50)))
    vectors = read_vectors(str(tmp_path / "v.npy"))
    assert vectors.array.shape == (50, 6) and vectors.paths[49] == "49.jpg"
    np.testing.assert_array_equal(vectors.array[10:47], array[10:47])
    np.testing.assert_array_equal(vectors.array[np.array([3, 4, 40])], array[[3, 4, 40]])
    np.testing.assert_array_equal(np.asarray(vectors.array), array)


# ---------------------------------------------------------------------------- end to end


@pytest.fixture
def photo_dir(tmp_path, photographs) -> Path:
    """Four photographs and byte copies of two of them (one in a subfolder)."""
    folder = tmp_path / "photos"
    (folder / "more").mkdir(parents=True)
    for index, photo in enumerate(photographs):
        photo.save(folder / f"photo{index}.jpg", quality=90)
    shutil.copyfile(folder / "photo1.jpg", folder / "more" / "photo1-copy.jpg")
    shutil.copyfile(folder / "photo3.jpg", folder / "photo3-copy.jpg")
    return folder


def embed_vectors(tiny_checkpoint: Path, folder: Path, output: Path) -> None:
    result = cli("embed", folder, "-o", output, "-m", tiny_checkpoint, "--dtype", "float32")
    assert result.exit_code == 0, result.stderr


def test_duplicates_finds_byte_copies_from_images(tiny_checkpoint, photo_dir, tmp_path):
    (photo_dir / "broken.jpg").write_bytes(b"not an image")
    out = tmp_path / "groups.jsonl"
    args = ["-m", tiny_checkpoint, "--dtype", "float32", "--threshold", "1.0", "-o", out]
    result = cli("duplicates", photo_dir, *args, "--keep", "first")
    assert result.exit_code == 1, result.stderr  # the broken file failed, alone
    assert f"{photo_dir / 'broken.jpg'}: " in result.stderr
    groups = jsonl(out.read_text())
    folder = str(photo_dir)
    assert groups == [
        {
            "paths": [f"{folder}/more/photo1-copy.jpg", f"{folder}/photo1.jpg"],
            "score": 1.0,
            "exact": True,
            "copies": [[f"{folder}/more/photo1-copy.jpg", f"{folder}/photo1.jpg"]],
            "keep": f"{folder}/more/photo1-copy.jpg",
        },
        {
            "paths": [f"{folder}/photo3-copy.jpg", f"{folder}/photo3.jpg"],
            "score": 1.0,
            "exact": True,
            "copies": [[f"{folder}/photo3-copy.jpg", f"{folder}/photo3.jpg"]],
            "keep": f"{folder}/photo3-copy.jpg",
        },
    ]
    others = (tmp_path / "groups.others.txt").read_text().splitlines()
    assert others == [f"{folder}/photo1.jpg", f"{folder}/photo3.jpg"]
    assert all(Path(path).exists() for path in others)  # nothing deleted


def test_duplicates_from_a_vectors_file_equals_from_images(tiny_checkpoint, photo_dir, tmp_path):
    embed_vectors(tiny_checkpoint, photo_dir, tmp_path / "v.npy")
    from_file = cli("duplicates", tmp_path / "v.npy", "-t", "0.999", "-f", "jsonl")
    assert from_file.exit_code == 0, from_file.stderr
    images = ["-m", tiny_checkpoint, "--dtype", "float32", "-t", "0.999", "-f", "jsonl"]
    from_images = cli("duplicates", photo_dir, *images)
    assert from_images.exit_code == 0, from_images.stderr
    assert jsonl(from_file.stdout) == jsonl(from_images.stdout)
    assert len(jsonl(from_file.stdout)) == 2


@pytest.mark.parametrize("suffix", ["npy", "npz", "parquet"])
def test_similar_returns_an_exact_copy_first(tiny_checkpoint, photo_dir, tmp_path, suffix):
    if suffix == "parquet":
        pytest.importorskip("pyarrow")
    vectors = tmp_path / f"v.{suffix}"
    embed_vectors(tiny_checkpoint, photo_dir, vectors)
    assert read_vectors(str(vectors)).settings["pool"] == "cls"  # recorded with the vectors
    query = tmp_path / "query.jpg"
    shutil.copyfile(photo_dir / "photo2.jpg", query)
    result = cli("similar", query, "--in", vectors, "-k", "3", "-f", "jsonl")
    assert result.exit_code == 0, result.stderr
    [record] = jsonl(result.stdout)
    assert record["path"] == str(query)
    assert [match["path"] for match in record["matches"]][0] == str(photo_dir / "photo2.jpg")
    assert record["matches"][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert len(record["matches"]) == 3
    if suffix == "npy" and importlib.util.find_spec("usearch"):  # one query through the index
        result = cli("similar", query, "--in", vectors, "-k", "3", "--index", "approximate")
        assert result.exit_code == 0, result.stderr
        [again] = jsonl(result.stdout)  # rescored in float32: the exact search's answer
        assert [m["path"] for m in again["matches"]] == [m["path"] for m in record["matches"]]
        for new, old in zip(again["matches"], record["matches"], strict=True):
            assert new["score"] == pytest.approx(old["score"], abs=1e-5)
    assert [m["score"] for m in record["matches"]] == sorted(
        (m["score"] for m in record["matches"]), reverse=True
    )


def test_similar_refuses_a_query_with_other_settings(
    tiny_checkpoint, make_checkpoint_dir, photo_dir, tmp_path
):
    vectors = tmp_path / "v.npy"
    embed_vectors(tiny_checkpoint, photo_dir, vectors)
    query = photo_dir / "photo0.jpg"
    result = cli("similar", query, "--in", vectors, "--pool", "mean")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {vectors} was written with --pool cls, not mean"
    other = make_checkpoint_dir("tiny", 1)  # same shapes, other weights
    result = cli("similar", query, "--in", vectors, "-m", other)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {vectors} was written with --model {tiny_checkpoint}")
    assert f"not {other}; with weights " in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_similar_refuses_vectors_without_paths_or_of_another_width(tiny_checkpoint, tmp_path):
    query = tmp_path / "q.png"
    from PIL import Image

    Image.new("RGB", (32, 32), "red").save(query)
    np.save(tmp_path / "v.npy", np.ones((2, 7), np.float32))
    result = cli("similar", query, "--in", tmp_path / "v.npy", "-m", tiny_checkpoint)
    assert result.exit_code == 2
    assert "v.npy: no paths beside it" in result.stderr
    (tmp_path / "v.paths.txt").write_text("a.jpg\nb.jpg\n")
    result = cli("similar", query, "--in", tmp_path / "v.npy", "-m", tiny_checkpoint)
    assert result.exit_code == 2
    assert "v.npy: vectors of width 7, but this model's are 32 wide" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_approximate_index_without_usearch_is_one_line(tmp_path, monkeypatch):
    np.save(tmp_path / "v.npy", np.ones((2, 4), np.float32))
    (tmp_path / "v.paths.txt").write_text("a.jpg\nb.jpg\n")
    monkeypatch.setitem(sys.modules, "usearch", None)  # as if not installed
    result = cli("duplicates", tmp_path / "v.npy", "--index", "approximate")
    assert result.exit_code == 2
    assert result.stderr == (
        'error: install the search extra: pip install "vithybrid[search]" (needs usearch)\n'
    )


def test_help_of_the_search_commands_does_not_import_torch():
    code = (
        "import sys\n"
        "import vithybrid_cli.cli as cli\n"
        "for command in ('duplicates', 'similar'):\n"
        "    sys.argv = ['vithybrid', command, '--help']\n"
        "    try:\n"
        "        cli.main()\n"
        "    except SystemExit as exit:\n"
        "        assert exit.code in (0, None), exit.code\n"
        "print('torch' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--threshold" in result.stdout and "--in" in result.stdout
    assert result.stdout.strip().endswith("False")


@pytest.mark.slow
def test_installed_script_finds_copies_and_similar_images(tiny_checkpoint, photo_dir, tmp_path):
    script = shutil.which("vithybrid", path=str(Path(sys.executable).parent)) or "vithybrid"
    model = ["-m", str(tiny_checkpoint), "--dtype", "float32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}

    def run(*args: object) -> subprocess.CompletedProcess:
        command = [script, *map(str, args)]
        return subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)

    done = run("embed", photo_dir, "-o", "v.parquet", *model)
    assert done.returncode == 0, done.stderr
    done = run("duplicates", "v.parquet", "-t", "1.0", "-o", "groups.jsonl")
    assert done.returncode == 0, done.stderr
    groups = jsonl((tmp_path / "groups.jsonl").read_text())
    assert [len(group["paths"]) for group in groups] == [2, 2]
    assert all(group["exact"] for group in groups)
    done = run("similar", photo_dir / "photo0.jpg", "--in", "v.parquet", "-k", "2")
    assert done.returncode == 0, done.stderr
    [record] = jsonl(done.stdout)  # piped: JSON Lines
    assert record["matches"][0] == {"path": str(photo_dir / "photo0.jpg"), "score": 1.0}


def test_duplicates_of_vectors_written_elsewhere_find_byte_copies_and_sizes(tmp_path, monkeypatch):
    """A vectors file records paths relative to the folder embed ran in; `duplicates` run from
    another folder still finds byte copies and the largest file through the file's folder."""
    from PIL import Image

    shots = tmp_path / "shots"
    shots.mkdir()
    Image.new("RGB", (40, 30), "red").save(shots / "a.png")
    shutil.copy(shots / "a.png", shots / "a-copy.png")
    Image.new("RGB", (80, 60), "blue").save(shots / "big.png")
    Image.new("RGB", (20, 15), "blue").save(shots / "small.png")
    rng = np.random.default_rng(0)
    array = np.ascontiguousarray(np.linalg.qr(rng.standard_normal((8, 4)))[0].T, np.float32)
    array[3] = array[2]  # big and small: the same picture to the model
    np.save(shots / "v.npy", array)
    (shots / "v.paths.txt").write_text("a.png\na-copy.png\nsmall.png\nbig.png\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = elsewhere / "groups.jsonl"
    result = cli("duplicates", shots / "v.npy", "-o", out, "--keep", "largest")
    assert result.exit_code == 0, result.output
    groups = [json.loads(line) for line in out.read_text().splitlines()]
    by_exact = {group["exact"]: group for group in groups}
    assert sorted(by_exact[True]["paths"]) == ["a-copy.png", "a.png"]  # not near: orthogonal rows
    assert by_exact[False]["keep"] == "big.png"
    assert (elsewhere / "groups.others.txt").read_text().splitlines() == ["a-copy.png", "small.png"]


def test_byte_copies_joined_by_a_near_copy_are_counted_and_listed(tmp_path, monkeypatch):
    """coffee.jpg, its byte copy and a recompression of it: one near group at 0.95 that still
    says which two files are byte copies, in the records, the summary, the table and the page."""
    from PIL import Image

    Image.new("RGB", (40, 30), "brown").save(tmp_path / "coffee.jpg", quality=95)
    shutil.copy(tmp_path / "coffee.jpg", tmp_path / "coffee_copy.jpg")
    Image.new("RGB", (40, 30), "brown").save(tmp_path / "coffee_q40.jpg", quality=40)
    array = np.zeros((3, 4), np.float32)
    array[:, 0] = 1.0
    array[2, 1] = 0.2  # the recompression: cosine 0.98 to the others
    np.save(tmp_path / "v.npy", array)
    (tmp_path / "v.paths.txt").write_text("coffee.jpg\ncoffee_copy.jpg\ncoffee_q40.jpg\n")
    monkeypatch.chdir(tmp_path)
    args = ["v.npy", "-t", "0.95", "--keep", "largest", "-o", "groups.jsonl"]
    result = cli("duplicates", *args, "--report", "groups.html")
    assert result.exit_code == 0, result.output
    [group] = jsonl((tmp_path / "groups.jsonl").read_text())
    assert group["exact"] is False and group["keep"] == "coffee.jpg"  # the most bytes, first
    assert sorted(group["paths"]) == ["coffee.jpg", "coffee_copy.jpg", "coffee_q40.jpg"]
    assert group["copies"] == [["coffee.jpg", "coffee_copy.jpg"]]
    assert "1 group (0 exact, 1 with byte copies) of 3 files" in result.stderr
    assert '"with byte copies","1"' in (tmp_path / "groups.html").read_text()
    table = cli("duplicates", "v.npy", "-t", "0.95", "-f", "table")
    assert table.exit_code == 0, table.output
    assert "coffee.jpg (byte copy A)" in table.stdout
    assert "coffee_copy.jpg (byte copy A)" in table.stdout
    assert "coffee_q40.jpg (byte" not in table.stdout


def test_a_folder_of_parquet_parts_is_one_vectors_source(tmp_path, monkeypatch):
    """The Ray engine's `embed -o DIR/` parts read as one vectors file, in part order, with
    their settings; a folder of images is not taken for one."""
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from vithybrid_cli.io.parquet import PARTS_SETTINGS, embedding_schema
    from vithybrid_cli.search.vectors import is_vectors_file

    rng = np.random.default_rng(1)
    array = rng.standard_normal((7, 5)).astype(np.float32)
    array[6] = array[1]  # a duplicate across the two parts
    parts = tmp_path / "parts"
    parts.mkdir()
    settings = {"command": "embed", "pool": "cls", "model": "m"}
    schema = embedding_schema(pa, (5,), settings)
    for name, rows in (("part-0-b.parquet", range(3, 7)), ("part-0-a.parquet", range(3))):
        column = pa.FixedSizeListArray.from_arrays(pa.array(array[list(rows)].ravel()), 5)
        paths = pa.array([f"{row}.jpg" for row in rows])
        pq.write_table(pa.Table.from_arrays([paths, column], schema=schema), parts / name)
    (parts / PARTS_SETTINGS).write_text(json.dumps({"engine": "ray", "settings": settings}))
    assert is_vectors_file(str(parts)) and not is_vectors_file(str(tmp_path))
    vectors = read_vectors(str(parts))
    assert vectors.paths == [f"{row}.jpg" for row in range(7)]  # part-0-a first
    np.testing.assert_array_equal(np.asarray(vectors.array), array)
    assert vectors.settings == settings
    monkeypatch.chdir(tmp_path)
    result = cli("duplicates", "parts", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert [group["paths"] for group in jsonl(result.stdout)] == [["1.jpg", "6.jpg"]]
    (parts / "part-0-a.parquet").unlink()
    (parts / "part-0-b.parquet").unlink()
    result = cli("duplicates", "parts")
    assert result.exit_code == 2
    assert result.stderr.strip() == "error: parts: holds no .parquet parts (embed writes them)"


def test_an_approximate_index_of_a_vectors_file_is_kept_for_the_next_run(tmp_path, monkeypatch):
    pytest.importorskip("usearch")
    from vithybrid_cli.search.index import ApproximateIndex

    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "cache"))
    array = np.random.default_rng(3).standard_normal((300, 16)).astype(np.float32)
    array[200] = array[7] * 2  # the same direction: a near-duplicate of row 7
    np.save(tmp_path / "v.npy", array)
    (tmp_path / "v.paths.txt").write_text("".join(f"{i}.jpg\n" for i in range(300)))
    vectors = read_vectors(str(tmp_path / "v.npy"))
    saved = vectors.saved_index()
    assert saved.parent == tmp_path / "cache" / "usearch" and not saved.exists()

    built = ApproximateIndex(vectors.array, saved=saved)
    assert not built.loaded and saved.is_file()
    again = ApproximateIndex(vectors.array, saved=saved)
    assert again.loaded
    queries = array[:20]
    first, second = built.search(queries, 5), again.search(queries, 5)
    np.testing.assert_array_equal(first.indices, second.indices)
    np.testing.assert_allclose(first.scores, second.scores)

    saved.write_bytes(b"not an index")  # torn or foreign: built again, and rewritten
    rebuilt = ApproximateIndex(vectors.array, saved=saved)
    assert not rebuilt.loaded and ApproximateIndex(vectors.array, saved=saved).loaded

    result = cli("duplicates", tmp_path / "v.npy", "--index", "approximate", "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert [group["paths"] for group in jsonl(result.stdout)] == [["7.jpg", "200.jpg"]]
    kept = saved.stat().st_mtime_ns
    result = cli("duplicates", tmp_path / "v.npy", "--index", "approximate", "-f", "jsonl")
    assert [group["paths"] for group in jsonl(result.stdout)] == [["7.jpg", "200.jpg"]]
    assert saved.stat().st_mtime_ns == kept  # loaded, not built and written again

    np.save(tmp_path / "v.npy", array[::-1].copy())  # written again: another key, no stale graph
    os.utime(tmp_path / "v.npy", ns=(1, 1))
    assert read_vectors(str(tmp_path / "v.npy")).saved_index() != saved


# ---------------------------------------------------------------------------- --against


def vectors_file(path: Path, array: np.ndarray, names: list[str], settings=None) -> Path:
    np.save(path, array.astype(np.float32))
    path.with_suffix(".paths.txt").write_text("".join(f"{name}\n" for name in names))
    if settings is not None:
        path.with_suffix(".settings.json").write_text(json.dumps(settings))
    return path


def test_against_lists_new_items_in_the_collection_and_among_themselves(tmp_path):
    rng = np.random.default_rng(5)
    home = tmp_path / "collection"
    home.mkdir()
    base = rng.standard_normal((300, 16))
    collection = vectors_file(home / "c.npy", base, [f"{i}.jpg" for i in range(300)])
    (home / "5.jpg").write_bytes(b"the same bytes")
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    (arrivals / "n0.jpg").write_bytes(b"the same bytes")  # a byte copy of 5.jpg
    alone = rng.standard_normal(16)
    new = np.stack([base[5] * 2, alone, alone + 0.01 * rng.standard_normal(16), -base[9]])
    names = ["n0.jpg", "n1.jpg", "n2.jpg", "n3.jpg"]
    new_file = vectors_file(arrivals / "new.npy", new, names)
    result = cli("duplicates", new_file, "--against", collection, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    records = jsonl(result.stdout)
    assert [{k: r[k] for k in ("path", "match", "in", "exact")} for r in records] == [
        {"path": "n0.jpg", "match": "5.jpg", "in": "collection", "exact": True},
        {"path": "n1.jpg", "match": "n2.jpg", "in": "new", "exact": False},
    ]
    assert records[0]["score"] == pytest.approx(1.0, abs=1e-6)
    unit = new / np.linalg.norm(new, axis=1, keepdims=True)
    assert records[1]["score"] == pytest.approx(float(unit[1] @ unit[2]), abs=1e-5)
    assert "1 of 4 new items with a near copy in" in result.stderr
    assert "1 near-copy pair among them" in result.stderr
    # nothing found: still exit 0, and no line
    lonely = vectors_file(arrivals / "lonely.npy", new[3:], ["n3.jpg"])
    result = cli("duplicates", lonely, "--against", collection, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == ""
    table = cli("duplicates", new_file, "--against", collection, "-f", "table")
    assert table.exit_code == 0 and "n2.jpg" in table.stdout and "collection" in table.stdout


def test_against_embeds_new_photos_as_the_collection_was(tiny_checkpoint, photo_dir, tmp_path):
    vectors = tmp_path / "v.npy"
    embed_vectors(tiny_checkpoint, photo_dir, vectors)
    arrivals = tmp_path / "arrivals"
    arrivals.mkdir()
    shutil.copyfile(photo_dir / "photo2.jpg", arrivals / "again.jpg")
    result = cli("duplicates", arrivals, "--against", vectors, "-t", "0.999", "-f", "jsonl")
    assert result.exit_code == 0, result.output  # no --model, --dtype: the recorded ones
    [record] = jsonl(result.stdout)
    assert record["path"] == str(arrivals / "again.jpg")
    assert record["match"] == str(photo_dir / "photo2.jpg")
    assert (record["in"], record["exact"]) == ("collection", True)
    assert record["score"] == pytest.approx(1.0, abs=1e-5)
    # a setting given explicitly that the collection was not embedded with: one line, exit 2
    result = cli("duplicates", arrivals, "--against", vectors, "--pool", "mean")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {vectors} was written with --pool cls, not mean"


def test_against_bad_input_is_one_line_before_any_work(tmp_path):
    rng = np.random.default_rng(6)
    settings = {"command": "embed", "pool": "cls", "model": "m", "dtype": "float32"}
    collection = vectors_file(
        tmp_path / "c.npy", rng.standard_normal((20, 8)), list("abcdefghij" * 2), settings
    )
    mean = vectors_file(
        tmp_path / "mean.npy", rng.standard_normal((2, 8)), ["x", "y"], {**settings, "pool": "mean"}
    )
    plain = vectors_file(tmp_path / "new.npy", rng.standard_normal((2, 8)), ["x", "y"])
    (tmp_path / "list.txt").write_text("a\n")
    photos = tmp_path / "photos"
    photos.mkdir()
    out = tmp_path / "out.jsonl"
    cases = [
        ((mean, "--against", collection), f"error: {collection} was written with --pool cls, "
         f"not mean (as {mean} was)"),
        ((plain, "--against", collection, "--pool", "mean"),
         f"error: {collection} was written with --pool cls, not mean"),
        ((plain, "--against", tmp_path / "missing.npy"),
         f"error: {tmp_path / 'missing.npy'}: no such file"),
        ((plain, "--against", tmp_path / "list.txt"),
         f"error: {tmp_path / 'list.txt'}: not a vectors file (.npy, .npz or .parquet)"),
        ((plain, "--against", photos), f"error: {photos}: a folder, not vectors: --against takes "
         "an `embed` output (.npy with its .paths.txt, .npz, .parquet, or the Ray engine's "
         "folder of parts)"),
        ((plain, "--against", collection, "--keep", "first"), "error: --keep works on groups; "
         "--against lists matches, one a line (run `duplicates` without --against for groups)"),
        ((plain, "--against", collection, "--report", tmp_path / "page.html"), "error: --report "
         "works on groups; --against lists matches, one a line (run `duplicates` without "
         "--against for groups)"),
    ]  # fmt: skip
    for args, line in cases:
        result = cli("duplicates", *args, "-o", out)
        assert result.exit_code == 2, (args, result.output)
        assert " ".join(result.stderr.split()) == line, args
        assert not out.exists() and not (tmp_path / "page.html").exists()
    for kept in (collection, mean, plain, tmp_path / "list.txt"):
        assert kept.exists()  # nothing deleted


def test_against_loads_the_collections_kept_index(tmp_path, monkeypatch):
    pytest.importorskip("usearch")
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(8)
    base = rng.standard_normal((400, 16))
    collection = vectors_file(tmp_path / "c.npy", base, [f"{i}.jpg" for i in range(400)])
    new_file = vectors_file(tmp_path / "new.npy", base[[7]] * 3, ["n.jpg"])
    args = ["duplicates", new_file, "--against", collection, "--index", "approximate"]
    first = cli(*args, "-f", "jsonl")
    assert first.exit_code == 0, first.output
    saved = read_vectors(str(collection)).saved_index()
    kept = saved.stat().st_mtime_ns
    again = cli(*args, "-f", "jsonl")
    assert again.exit_code == 0, again.output
    assert jsonl(again.stdout) == jsonl(first.stdout)
    assert [(r["path"], r["match"]) for r in jsonl(first.stdout)] == [("n.jpg", "7.jpg")]
    assert "approximate search of 400 vectors" in again.stderr
    assert saved.stat().st_mtime_ns == kept  # loaded, not built again
