"""`duplicates --index clustered` (search/clustered.py): exact search inside coarse clusters on
clustered vectors with planted near copies, the kept index grown with an appended file, and the
bad inputs around it. Small sizes only (benchmarks/bench_search.py runs a million)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from vithybrid_cli.cli import app
from vithybrid_cli.search import clustered
from vithybrid_cli.search.grouping import find_duplicates
from vithybrid_cli.search.vectors import read_vectors

THRESHOLD = 0.9


def cli(*args: object):
    return CliRunner().invoke(app, [str(arg) for arg in args], env={"COLUMNS": "200"})


def groups_of(result) -> list[list[str]]:
    return [json.loads(line)["paths"] for line in result.stdout.splitlines() if line.strip()]


def scenes(count: int, width: int = 128, scenes: int = 40, planted: int = 30, seed: int = 0):
    """(rows, planted pairs): rows around `scenes` centres (cosine ~0.8 within a scene, as
    photos of one scene are), `planted` rows copied at cosine 0.95 onto other rows."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((scenes, width))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    chosen = centres[rng.integers(0, scenes, count)]
    noise = rng.standard_normal((count, width))
    noise -= (noise * chosen).sum(1, keepdims=True) * chosen
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    rows = np.sqrt(0.8) * chosen + np.sqrt(0.2) * noise
    pairs = np.sort(rng.choice(count, (planted, 2), replace=False), axis=1)
    for first, second in pairs:
        extra = rng.standard_normal(width)
        extra -= extra @ rows[first] * rows[first]
        rows[second] = 0.95 * rows[first] + np.sqrt(1 - 0.95**2) * extra / np.linalg.norm(extra)
    return (rows * 2.0).astype(np.float32), {tuple(p) for p in pairs.tolist()}


def write(folder, rows: np.ndarray, name: str = "v") -> str:
    np.save(folder / f"{name}.npy", rows)
    (folder / f"{name}.paths.txt").write_text("".join(f"{i}.jpg\n" for i in range(len(rows))))
    return str(folder / f"{name}.npy")


def pairs_of(groups) -> set[tuple[int, int]]:
    return {(a, b) for g in groups for i, a in enumerate(g.rows) for b in g.rows[i + 1 :]}


def test_clustered_search_finds_what_exact_search_finds_on_clustered_vectors():
    rows, planted = scenes(3000)
    paths = [""] * len(rows)
    notes: list[str] = []
    found = find_duplicates(rows, paths, THRESHOLD, index="clustered", note=notes.append)
    exact = find_duplicates(rows, paths, THRESHOLD, index="exact")
    assert [(g.rows, round(g.score, 5)) for g in found] == [
        (g.rows, round(g.score, 5)) for g in exact
    ]
    assert planted <= pairs_of(found)  # every planted near copy, and no false pair:
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    assert all(unit[a] @ unit[b] >= THRESHOLD for a, b in pairs_of(found))
    assert len(notes) == 1 and notes[0].startswith("recall 1.000 on 1,000 sampled rows against")


def test_the_sampled_recall_counts_a_missed_pair():
    rows, planted = scenes(500)
    pairs = clustered.rescored(rows, np.array(sorted(planted)), THRESHOLD)
    recall, sampled, exact = clustered.sampled_recall(rows, pairs, THRESHOLD, sample=500)
    assert (recall, sampled) == (1.0, 500) and exact >= len(planted)
    recall, _, _ = clustered.sampled_recall(rows, pairs[1:], THRESHOLD, sample=500)
    assert recall < 1.0


def test_a_grown_file_extends_the_kept_index_and_groups_as_a_rebuild(tmp_path, monkeypatch):
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "cache"))
    rows, planted = scenes(3030, seed=1)
    path = write(tmp_path, rows[:3000])
    saved = read_vectors(path).saved_index("clustered")
    notes: list[str] = []
    vectors = read_vectors(path)
    first = find_duplicates(
        vectors.array, vectors.paths, THRESHOLD, index="clustered", saved=saved,
        compare_bytes=False,
    )  # fmt: skip
    assert saved.is_file()

    path = write(tmp_path, rows)  # 30 rows appended (embed --resume with new photos)
    vectors = read_vectors(path)
    grown = find_duplicates(
        vectors.array, vectors.paths, THRESHOLD, index="clustered", saved=saved,
        compare_bytes=False, note=notes.append,
    )  # fmt: skip
    assert notes[0] == "30 rows appended since its index was kept: extended"
    kept = clustered.KeptIndex.load(saved)
    assert len(kept.assigned) == 3030
    rebuilt = find_duplicates(vectors.array, vectors.paths, THRESHOLD, index="clustered")
    assert [(g.rows, g.score) for g in grown] == [(g.rows, g.score) for g in rebuilt]
    exact = find_duplicates(vectors.array, vectors.paths, THRESHOLD, index="exact")
    assert [g.rows for g in grown] == [g.rows for g in exact]
    assert [g.score for g in grown] == pytest.approx([g.score for g in exact], abs=1e-6)
    assert pairs_of(first) < pairs_of(grown) and planted <= pairs_of(grown)


def test_duplicates_keeps_and_rebuilds_the_clustered_index(tmp_path, monkeypatch):
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "cache"))
    rows, planted = scenes(2000, seed=2)
    path = write(tmp_path, rows)
    saved = read_vectors(path).saved_index("clustered")
    expected = sorted([f"{a}.jpg", f"{b}.jpg"] for a, b in planted)

    def run() -> tuple[list[list[str]], list[str]]:
        result = cli("duplicates", path, "--index", "clustered", "-f", "jsonl")
        assert result.exit_code == 0, result.output
        return sorted(groups_of(result)), result.stderr.splitlines()

    found, lines = run()
    assert found == expected and saved.is_file()
    assert "rebuilt" not in result_text(lines)

    saved.write_bytes(b"PK\x03\x04 torn")  # a corrupt entry: rebuilt, said once
    found, lines = run()
    assert found == expected
    assert [line for line in lines if "rebuilt" in line] == [
        f"{path}: its kept index at {saved} is unreadable (File is not a zip file): rebuilt"
    ]
    assert clustered.KeptIndex.load(saved).fingerprint  # written again, whole

    kept = clustered.KeptIndex.load(saved)  # kept by another version of vithybrid
    np.savez(saved, **{**kept.__dict__, "format": np.array("vithybrid-clustered-0")})
    found, lines = run()
    assert found == expected and any("another version" in line for line in lines)

    write(tmp_path, rows[::-1].copy())  # the same name written again in another order
    found, lines = run()
    assert len(found) == len(expected)
    assert [line for line in lines if "rebuilt" in line] == [
        f"{path}: changed since its index was kept (not only appended): rebuilt"
    ]

    write(tmp_path, np.concatenate([rows, rows[:, :8]], axis=1))  # another width: rebuilt
    found, lines = run()
    assert any("rows of width 136, its kept index 128: rebuilt" in line for line in lines)
    assert clustered.KeptIndex.load(saved).centroids.shape[1] == 136


def result_text(lines: list[str]) -> str:
    return "\n".join(lines)


def test_a_truncated_npy_is_one_line_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "cache"))
    rows, _ = scenes(500)
    path = write(tmp_path, rows)
    data = (tmp_path / "v.npy").read_bytes()
    (tmp_path / "v.npy").write_bytes(data[:-1000])
    result = cli("duplicates", path, "--index", "clustered")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {path}: truncated (its header says 500 rows")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()  # nothing built, nothing deleted
    assert (tmp_path / "v.npy").stat().st_size == len(data) - 1000


@pytest.mark.parametrize("count", [40, 400])
def test_auto_picks_clustered_above_the_crossover(count, monkeypatch):
    from vithybrid_cli.search import index

    monkeypatch.setattr(index, "APPROXIMATE_FROM", 100)
    assert index.choose_index("auto", count) == ("clustered" if count > 100 else "exact")


def test_embed_resume_with_new_photos_after_the_old_extends_the_index(
    tiny_checkpoint, photographs, tmp_path, monkeypatch
):
    """New photos that come after the old ones in the input land after the old rows: the next
    duplicates extends the kept index (the guide's "A collection that grows")."""
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    for number, photo in enumerate(photographs[:2]):
        photo.save(folder / f"2024-{number}.jpg", quality=90)
    vectors = tmp_path / "v.npy"
    embed = ["embed", folder, "-o", vectors, "-m", tiny_checkpoint, "--dtype", "float32"]
    assert cli(*embed).exit_code == 0
    before = np.load(vectors)
    monkeypatch.setattr("vithybrid_cli.search.index.APPROXIMATE_FROM", 1)  # auto: clustered
    result = cli("duplicates", vectors, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert "extended" not in result.stderr and "rebuilt" not in result.stderr

    for number, photo in enumerate(photographs[2:], 2):
        photo.save(folder / f"2025-{number}.jpg", quality=90)
    result = cli(*embed, "--resume")
    assert result.exit_code == 0, result.output
    after = np.load(vectors)
    assert len(after) == len(photographs) and np.array_equal(after[: len(before)], before)
    result = cli("duplicates", vectors, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert f"{vectors}: 2 rows appended since its index was kept: extended" in result.stderr


def test_embed_resume_with_new_photos_between_the_old_appends_them_and_extends_the_index(
    tiny_checkpoint, photographs, tmp_path, monkeypatch
):
    """New photos that sort before and between the old ones land after the old rows (the journal
    appends to a finished output): the next duplicates extends the kept index."""
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "photos"
    folder.mkdir()
    old, new = photographs[::2], photographs[1::2]
    for number, photo in enumerate(old):
        photo.save(folder / f"{2 * number + 1}.jpg", quality=90)  # 1.jpg, 3.jpg, ...
    vectors = tmp_path / "v.npy"
    listing = vectors.with_suffix(".paths.txt")
    embed = ["embed", folder, "-o", vectors, "-m", tiny_checkpoint, "--dtype", "float32"]
    assert cli(*embed).exit_code == 0
    before, before_paths = np.load(vectors), listing.read_text().splitlines()
    monkeypatch.setattr("vithybrid_cli.search.index.APPROXIMATE_FROM", 1)  # auto: clustered
    assert cli("duplicates", vectors, "-f", "jsonl").exit_code == 0

    for number, photo in enumerate(new):
        photo.save(folder / f"{2 * number}.jpg", quality=90)  # 0.jpg, 2.jpg, ...: between
    result = cli(*embed, "--resume")
    assert result.exit_code == 0, result.output
    after, paths = np.load(vectors), listing.read_text().splitlines()
    assert len(after) == len(photographs) and np.array_equal(after[: len(before)], before)
    added = [str(folder / f"{2 * number}.jpg") for number in range(len(new))]
    assert paths == [*before_paths, *added]  # the new ones after the old, in input order
    result = cli("duplicates", vectors, "-f", "jsonl")
    assert result.exit_code == 0, result.output
    assert f"{vectors}: {len(new)} rows appended since its index was kept: extended" in (
        result.stderr
    )


def test_a_low_threshold_over_dense_scenes_keeps_each_rows_best_k():
    rows, _ = scenes(2000, scenes=4)  # 500 rows a scene, every pair in a scene at ~0.8
    pairs = clustered.clustered_pairs(rows, 0.5, k=4, check_recall=False)
    assert 0 < len(pairs) <= len(rows) * 5 * clustered.MAX_ASSIGN  # not the ~500,000 pairs
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    first, second = pairs[:, 0].astype(int), pairs[:, 1].astype(int)
    assert ((unit[first] * unit[second]).sum(1) >= 0.5).all()


# ---------------------------------------------------------------------------- queries (--against)


def test_nearest_in_the_kept_clusters_equals_exact_search_and_reuses_the_index(
    tmp_path, monkeypatch
):
    from vithybrid_cli.search.index import nearest

    rows, planted = scenes(3000, seed=4)
    rows[2500] = rows[100]  # an exact copy later in the file: the lower row comes first
    rng = np.random.default_rng(9)
    firsts = sorted({a for a, _ in planted})
    queries = rows[firsts + [100]] + 0.01 * rng.standard_normal((len(firsts) + 1, 128)).astype(
        np.float32
    )
    saved = tmp_path / "kept.npz"
    paths = [f"{i}.jpg" for i in range(len(rows))]
    found = nearest(rows, queries, 5, "clustered", saved, paths=paths)
    exact = nearest(rows, queries, 5, "exact")
    assert saved.is_file()
    assert np.array_equal(found.indices, exact.indices)
    assert np.array_equal(found.scores, exact.scores)  # the same float32 scores, bit for bit
    for query, first in enumerate(firsts):  # each planted copy among its query's answers
        assert {b for a, b in planted if a == first} <= set(found.indices[query].tolist())
    assert found.indices[-1, :2].tolist() == [100, 2500]

    def no_build(*args, **kwargs):
        raise AssertionError("built again")

    monkeypatch.setattr(clustered, "built", no_build)  # kept: loaded, not built again
    again = nearest(rows, queries, 5, "clustered", saved, paths=paths)
    assert np.array_equal(again.indices, exact.indices)
    assert np.array_equal(again.scores, exact.scores)
    more = nearest(rows, queries[:2], 5000, "clustered", saved, paths=paths)  # k past a cluster
    assert (more.indices[:, -1] == -1).all() and np.isneginf(more.scores[:, -1]).all()
    assert np.array_equal(more.indices[:, :5], exact.indices[:2])

    grown = np.concatenate([rows, queries[:1] * 3])  # an appended copy: assigned in memory
    found = nearest(grown, queries[:1], 3, "clustered", saved, paths=paths + ["new.jpg"])
    assert 3000 in found.indices[0].tolist()


def test_duplicates_against_a_kept_clustered_index_matches_exact(tmp_path, monkeypatch):
    monkeypatch.setenv("VITHYBRID_CACHE", str(tmp_path / "cache"))
    rows, planted = scenes(2000, seed=5)
    collection = write(tmp_path, rows, "c")
    rng = np.random.default_rng(3)
    picked = sorted({a for a, _ in planted})[:6]
    new = rows[picked] + 0.02 * rng.standard_normal((len(picked), 128)).astype(np.float32)
    new_file = write(tmp_path, new, "new")
    args = ["duplicates", new_file, "--against", collection, "-f", "jsonl", "-t", "0.85"]
    saved = read_vectors(collection).saved_index("clustered")

    first = cli(*args, "--index", "clustered")
    assert first.exit_code == 0, first.output
    assert saved.is_file() and "clustered search of 2,000 vectors" in first.stderr
    assert f"{collection}: no clustered index kept yet: built now and kept" in first.stderr
    kept = saved.stat().st_mtime_ns
    again = cli(*args, "--index", "clustered")
    assert again.exit_code == 0, again.output
    assert saved.stat().st_mtime_ns == kept  # loaded, not built again
    assert "built now" not in again.stderr
    exact = cli(*args, "--index", "exact")
    assert exact.exit_code == 0, exact.output
    records = [json.loads(line) for line in again.stdout.splitlines() if line.strip()]
    assert records == [json.loads(line) for line in exact.stdout.splitlines() if line.strip()]
    assert {r["match"] for r in records if r["in"] == "collection"} >= {f"{a}.jpg" for a in picked}

    groups = cli("duplicates", collection, "--index", "clustered", "-f", "jsonl")  # reused
    assert groups.exit_code == 0, groups.output
    assert "rebuilt" not in groups.stderr
