"""`vithybrid sort`: a classify run's photos into DIR/LABEL/ (links, copies, moves), and --undo.

The main runs sort a real classify output (the tiny checkpoint over real photographs); the edge
cases (collisions, _unsure, failures, abstentions, odd label names) use hand-written results.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import checkpoints
import pytest
from test_cli import assert_clean_error, cli, jsonl, run

from vithybrid_cli.io import sorting
from vithybrid_cli.io.outputs import open_writer
from vithybrid_cli.io.sorting import folder_name, folder_names, read_manifest
from vithybrid_cli.pipeline.fit.examples import collect_folder

NAMES = ["cat.jpg", "astronaut.jpg", "coffee.jpg", "rocket.jpg"]


@pytest.fixture(scope="module")
def classified(tiny_checkpoint, tmp_path_factory) -> Path:
    """A real classify run (tiny model) over four photographs and one broken file, its paths
    relative to the folder it ran in (`root`)."""
    root = tmp_path_factory.mktemp("run")
    photos = root / "photos"
    photos.mkdir()
    for name, image in zip(NAMES, checkpoints.photographs(4), strict=True):
        image.convert("RGB").resize((160, 120)).save(photos / name)
    (photos / "broken.jpg").write_bytes((photos / "cat.jpg").read_bytes()[:500])
    output = root / "labels.jsonl"
    here = os.getcwd()
    os.chdir(root)
    try:
        result = cli("classify", "photos", "--model", tiny_checkpoint, "-o", output, "--quiet")
    finally:
        os.chdir(here)
    assert result.exit_code == 1, result.stderr  # the broken file
    return output


def top_labels(results: Path) -> dict[str, str]:
    """photo name -> its top-1 label, for the records that have one."""
    return {
        Path(record["path"]).name: record["top_k"][0]["label"]
        for record in jsonl(results.read_text())
        if "top_k" in record
    }


def files_below(folder: Path) -> dict[str, Path]:
    """relative path -> path, every file or link below `folder` (hidden ones too)."""
    return {
        str(path.relative_to(folder)): path
        for path in sorted(folder.rglob("*"))
        if path.is_symlink() or path.is_file()
    }


def write_results(path: Path, records: list[dict], **options) -> Path:
    writer = open_writer("records", path.suffix[1:], str(path), **{"top_k": 2, **options})
    for record in records:
        writer.write(record)
    writer.close()
    return path


def record(path: str, top: str, top_score: float = 0.9, **decision) -> dict:
    """A classify record, its top-1 label `top`; `label` and `score` given: a decision's."""
    return {"path": path, **decision, "top_k": [{"index": 0, "label": top, "score": top_score}]}


# ---------------------------------------------------------------------------- a real run


def test_sort_links_a_real_run_into_the_folders_fit_reads(classified, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the paths are found from the results' folder
    result = cli("sort", classified, "--into", "sorted")
    assert result.exit_code == 0, result.stderr
    labels = top_labels(classified)
    folders = set(labels.values())
    assert (
        f"sorted 4 photos into {len(folders)} folder{'s' * (len(folders) > 1)}, "
        "1 failure left out; linked into"
    ) in result.stderr
    placed = files_below(tmp_path / "sorted")
    assert sorted(placed) == sorted(f"{label}/{name}" for name, label in labels.items())
    for name, link in placed.items():
        target = os.readlink(link)
        assert os.path.isabs(target)  # absolute: a link dragged to another folder still works
        assert Path(target) == classified.parent / "photos" / Path(name).name
    examples = collect_folder(str(tmp_path / "sorted"))  # what `vithybrid fit` reads
    assert {(Path(e.path).name, e.label) for e in examples.items} == set(labels.items())

    again = cli("sort", classified, "--into", "sorted")  # run again: no second link
    assert again.exit_code == 0, again.stderr
    assert "sorted 0 photos into 0 folders" in again.stderr
    assert "4 already linked there" in again.stderr
    assert files_below(tmp_path / "sorted").keys() == placed.keys()


def test_sort_copies_and_abstentions_go_to_unsure(classified, tiny_checkpoint, tmp_path):
    photos = classified.parent / "photos"
    decided = tmp_path / "decided.csv"  # a --min-score run: every tiny-model score is low
    result = cli("classify", photos, "--model", tiny_checkpoint, "--min-score", "0.99", "-o",
                 decided, "--quiet")  # fmt: skip
    assert result.exit_code == 1, result.stderr
    sorted_dir = tmp_path / "sorted"
    result = cli("sort", decided, "--into", sorted_dir, "--copy")
    assert result.exit_code == 0, result.stderr
    assert "sorted 4 photos into 0 folders (4 abstained into _unsure)" in result.stderr
    placed = files_below(sorted_dir)
    assert sorted(placed) == sorted(f"_unsure/{name}" for name in NAMES)
    for name, copy in placed.items():
        assert not copy.is_symlink()
        assert copy.read_bytes() == (photos / Path(name).name).read_bytes()


def test_fit_reads_a_sorted_folder_and_leaves_out_unsure(tiny_checkpoint, tmp_path):
    """sort --min-score puts the low scores into _unsure/; fit trains on the label folders only
    and says what it left out."""
    photos = tmp_path / "photos"
    photos.mkdir()
    records = []
    for i, image in enumerate(checkpoints.photographs(6)):
        for crop in range(2):  # two crops of each photograph
            name = f"p{i}-{crop}.jpg"
            image.convert("RGB").crop((crop * 20, 0, crop * 20 + 200, 200)).save(photos / name)
            label, score = ("cat", "dog", "cat", "dog", "cat", "dog")[i], 0.9 - 0.7 * (i >= 4)
            records.append(record(f"photos/{name}", label, score))
    results = write_results(tmp_path / "labels.jsonl", records)
    sorted_dir = tmp_path / "sorted"
    result = cli("sort", results, "--into", sorted_dir, "--min-score", "0.5")
    assert result.exit_code == 0, result.stderr
    assert sorted(path.name for path in sorted_dir.iterdir()) == ["_unsure", "cat", "dog"]

    fit = cli("fit", sorted_dir, "-o", tmp_path / "head.safetensors", "--model", tiny_checkpoint,
              "--image-size", "128", "--interpolate-pos-encoding", "-f", "json")  # fmt: skip
    assert fit.exit_code == 0, fit.stderr
    report = json.loads(fit.stdout)
    assert report["labels"] == ["cat", "dog"]
    assert sum(row["train"] + row["validation"] for row in report["per_class"]) == 8
    left_out = "left out _unsure/ (4 photos): sort's unsure ones; move them into label folders"
    assert any(left_out in warning for warning in report["warnings"]), report["warnings"]
    assert left_out in fit.stderr


def test_installed_script_sorts_by_move_and_undoes_it(classified, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in NAMES:
        (photos / name).write_bytes((classified.parent / "photos" / name).read_bytes())
    results = tmp_path / "labels.jsonl"
    results.write_text(classified.read_text())  # paths photos/NAME: relative to tmp_path
    before = {name: (photos / name).read_bytes() for name in NAMES}
    done = run(["vithybrid", "sort", results, "--into", "sorted", "--move"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "moved into" in done.stderr and "undo: vithybrid sort --undo" in done.stderr
    assert not any((photos / name).exists() for name in NAMES)
    (manifest,) = (tmp_path / "sorted").glob(".vithybrid-sort-*.jsonl")
    into, moves = read_manifest(str(manifest))
    assert into == str(tmp_path / "sorted") and len(moves) == 4
    labels = top_labels(classified)
    assert sorted(moves) == sorted(
        (str(photos / name), str(tmp_path / "sorted" / labels[name] / name)) for name in NAMES
    )
    undone = run(["vithybrid", "sort", "--undo", manifest], cwd=tmp_path)
    assert undone.returncode == 0, undone.stderr
    assert "moved 4 photos back" in undone.stderr
    assert {name: (photos / name).read_bytes() for name in NAMES} == before
    assert files_below(tmp_path / "sorted") == {manifest.name: manifest}  # emptied folders go


# ---------------------------------------------------------------------------- edge cases


@pytest.fixture
def album(tmp_path) -> Path:
    """Photos in two folders, some with the same name."""
    for folder in ("a", "b", "c"):
        (tmp_path / "album" / folder).mkdir(parents=True)
        for name in ("cat.jpg", "dog.jpg"):
            (tmp_path / "album" / folder / name).write_bytes(f"{folder}/{name}".encode())
    return tmp_path / "album"


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_collisions_get_suffixes_in_results_order_and_nothing_is_overwritten(
    album, tmp_path, suffix
):
    results = write_results(tmp_path / f"r{suffix}", [
        record("album/a/cat.jpg", "cat"),
        record("album/b/cat.jpg", "cat"),
        record("album/c/cat.jpg", "cat"),
        record("album/a/dog.jpg", "dog", 0.2),
        record("album/b/dog.jpg", "dog", 0.3),
        {"path": "album/c/dog.jpg", "error": "cannot identify image file"},
        record("album/a/cat.jpg", "cat"),  # listed twice: placed once
    ])  # fmt: skip
    sorted_dir = tmp_path / "sorted"
    (sorted_dir / "cat").mkdir(parents=True)
    (sorted_dir / "cat" / "cat-1.jpg").write_bytes(b"the user's own")
    result = cli("sort", results, "--into", sorted_dir, "--copy", "--min-score", "0.25")
    assert result.exit_code == 0, result.stderr
    assert (
        "sorted 5 photos into 2 folders (1 below --min-score into _unsure), 1 failure left out, "
        "1 listed twice; copied into"
    ) in result.stderr
    placed = {name: path.read_bytes() for name, path in files_below(sorted_dir).items()}
    assert placed == {
        "cat/cat.jpg": b"a/cat.jpg",
        "cat/cat-1.jpg": b"the user's own",  # taken: never overwritten
        "cat/cat-2.jpg": b"b/cat.jpg",
        "cat/cat-3.jpg": b"c/cat.jpg",
        "_unsure/dog.jpg": b"a/dog.jpg",  # 0.2 < 0.25
        "dog/dog.jpg": b"b/dog.jpg",
    }


def test_decisions_abstentions_failures_and_missing_photos(album, tmp_path, monkeypatch):
    results = write_results(tmp_path / "r.jsonl", [
        record("album/a/cat.jpg", "dog", 0.9, label="cat", score=0.6),  # the decision wins
        record("album/b/cat.jpg", "cat", 0.4, label=None, score=0.4),  # abstained
        record("album/gone.jpg", "cat", 0.9, label="cat", score=0.9),
        record("https://example.com/x.jpg", "cat", 0.9, label="cat", score=0.9),
        {"path": "album/c/cat.jpg", "error": "cannot identify image file"},
    ], decision=True)  # fmt: skip
    monkeypatch.chdir(tmp_path)
    result = cli("sort", results, "--into", "out")
    assert result.exit_code == 0, result.stderr
    assert "sorted 2 photos into 1 folder (1 abstained into _unsure), 1 failure left out" in (
        result.stderr
    )
    assert "2 photos not found (first: album/gone.jpg)" in result.stderr
    assert sorted(files_below(tmp_path / "out")) == ["_unsure/cat.jpg", "cat/cat.jpg"]
    assert os.readlink(tmp_path / "out" / "cat" / "cat.jpg") == str(album / "a" / "cat.jpg")


def test_relative_paths_are_found_from_here_then_root_then_the_results_folder(
    album, tmp_path, monkeypatch
):
    (tmp_path / "elsewhere").mkdir()
    results = write_results(tmp_path / "elsewhere" / "r.jsonl", [record("a/cat.jpg", "cat")])
    monkeypatch.chdir(tmp_path / "elsewhere")
    missing = cli("sort", results, "--into", tmp_path / "one")
    assert "1 photo not found" in missing.stderr and "--root DIR" in missing.stderr
    found = cli("sort", results, "--into", tmp_path / "two", "--root", album)
    assert found.exit_code == 0, found.stderr
    assert os.readlink(tmp_path / "two" / "cat" / "cat.jpg") == str(album / "a" / "cat.jpg")
    (tmp_path / "elsewhere" / "a").mkdir()  # the results' folder, when nothing else has it
    (tmp_path / "elsewhere" / "a" / "cat.jpg").write_bytes(b"here")
    monkeypatch.chdir(tmp_path)
    beside = cli("sort", results, "--into", tmp_path / "three")
    assert beside.exit_code == 0, beside.stderr
    assert (tmp_path / "three" / "cat" / "cat.jpg").read_bytes() == b"here"


@pytest.mark.parametrize(
    ("label", "folder"),
    [
        ("cat", "cat"),
        ("a/b", "a_b"),
        ("a\\b", "a_b"),
        ("..", "__"),
        (".", "_"),
        (".hidden", "_hidden"),
        ("", "_empty"),
        ("  ", "_empty"),
        (" tab\tbed ", "tab_bed"),
        ("Köln Straße", "Köln Straße"),
        ("x" * 300, "x" * 200),
    ],
)
def test_label_names_become_safe_folder_names(label, folder):
    assert folder_name(label) == folder


def test_labels_sharing_a_folder_are_told_apart_and_odd_names_sort(album, tmp_path):
    assert folder_names(["a/b", "a_b", "_unsure", "Cat", "cat", "a/b"]) == {
        "a/b": "a_b", "a_b": "a_b-2", "_unsure": "_unsure-2", "Cat": "Cat", "cat": "cat-2",
    }  # fmt: skip
    results = write_results(tmp_path / "r.jsonl", [
        record(str(album / "a" / "cat.jpg"), "../../escape"),
        record(str(album / "b" / "cat.jpg"), ".."),
        record(str(album / "c" / "cat.jpg"), "_unsure"),
        record(str(album / "a" / "dog.jpg"), "dog", 0.1),
    ])  # fmt: skip
    result = cli("sort", results, "--into", tmp_path / "out", "--min-score", "0.5")
    assert result.exit_code == 0, result.stderr
    assert sorted(files_below(tmp_path / "out")) == [
        "__/cat.jpg", "___.._escape/cat.jpg", "_unsure-2/cat.jpg", "_unsure/dog.jpg",
    ]  # fmt: skip
    assert sorted(os.listdir(tmp_path)) == ["album", "out", "r.jsonl"]  # nothing escaped


# ---------------------------------------------------------------------------- bad input


def test_into_inside_a_folder_of_the_photos_is_refused(album, tmp_path):
    results = write_results(tmp_path / "r.jsonl", [
        record(str(album / "a" / "cat.jpg"), "cat"), record(str(album / "b" / "cat.jpg"), "cat"),
    ])  # fmt: skip
    for into in (album / "a" / "sorted", album / "sorted"):  # a photo's folder; their common one
        result = cli("sort", results, "--into", into)
        assert_clean_error(result, f"--into {into} is inside", "would walk the sorted links")
        assert len(result.stderr.strip().splitlines()) == 1
        assert not into.exists()


def test_a_move_across_file_systems_is_refused_before_anything_moves(album, tmp_path, monkeypatch):
    results = write_results(tmp_path / "r.jsonl", [
        record(str(album / "a" / "cat.jpg"), "cat"), record(str(album / "b" / "cat.jpg"), "cat"),
    ])  # fmt: skip
    real = sorting.device_of
    other = album / "b" / "cat.jpg"
    monkeypatch.setattr(
        sorting, "device_of", lambda path: real(path) + (path == str(other))
    )  # the second photo looks like it lies on another file system
    result = cli("sort", results, "--into", tmp_path / "out", "--move")
    assert_clean_error(result, f"--move: {other} is on another file system", "--copy")
    assert (album / "a" / "cat.jpg").exists() and other.exists()
    assert not (tmp_path / "out").exists()


def test_a_move_of_a_relative_symlink_is_refused(album, tmp_path):
    (album / "a" / "link.jpg").symlink_to("cat.jpg")
    results = write_results(tmp_path / "r.jsonl", [
        record(str(album / "b" / "cat.jpg"), "cat"), record(str(album / "a" / "link.jpg"), "cat"),
    ])  # fmt: skip
    result = cli("sort", results, "--into", tmp_path / "out", "--move")
    assert_clean_error(result, f"{album / 'a' / 'link.jpg'} is a symlink with a relative target")
    assert (album / "b" / "cat.jpg").exists() and not (tmp_path / "out").exists()


def test_results_that_are_not_a_classify_output_are_one_line(tmp_path):
    for name, text in [("notes.txt", "hello"), ("x.jsonl", '{"a": 1}\n'), ("y.csv", "a,b\n")]:
        (tmp_path / name).write_text(text)
        result = cli("sort", tmp_path / name, "--into", tmp_path / "out")
        assert_clean_error(result, str(tmp_path / name))
        assert len(result.stderr.strip().splitlines()) == 1
    assert_clean_error(cli("sort", tmp_path / "x.jsonl"), "--into DIR")
    both = cli("sort", tmp_path / "x.jsonl", "--into", tmp_path / "o", "--link", "--move")
    assert_clean_error(both, "one of --link, --copy, --move")
    assert_clean_error(cli("sort", "--undo", tmp_path / "m.jsonl", "--into", "x"), "takes no")
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- moves and undo


@pytest.fixture
def moved(album, tmp_path) -> tuple[Path, Path]:
    """album's a/ and b/ photos moved into tmp_path/out; (the manifest, album)."""
    results = write_results(tmp_path / "r.jsonl", [
        record(str(album / folder / name), name[:3])
        for folder in ("a", "b") for name in ("cat.jpg", "dog.jpg")
    ])  # fmt: skip
    result = cli("sort", results, "--into", tmp_path / "out", "--move")
    assert result.exit_code == 0, result.stderr
    (manifest,) = (tmp_path / "out").glob(".vithybrid-sort-*.jsonl")
    assert sorted(files_below(tmp_path / "out")) == [
        manifest.name, "cat/cat-1.jpg", "cat/cat.jpg", "dog/dog-1.jpg", "dog/dog.jpg",
    ]  # fmt: skip
    return manifest, album


def test_undo_keeps_what_appeared_at_the_old_place_and_reports_what_is_gone(moved, tmp_path):
    manifest, album = moved
    (album / "a" / "cat.jpg").write_bytes(b"a new photo")  # appeared at an old place since
    (tmp_path / "out" / "dog" / "dog-1.jpg").unlink()  # b/dog.jpg, deleted since
    result = cli("sort", "--undo", manifest)
    assert result.exit_code == 1, result.stderr
    assert f"{album / 'a' / 'cat.jpg'}: another file is there now" in result.stderr
    assert f"{tmp_path / 'out' / 'dog' / 'dog-1.jpg'}: gone since the sort" in result.stderr
    assert "moved 2 photos back, 1 kept (another file at the old place), 1 gone since" in (
        result.stderr
    )
    assert (album / "a" / "cat.jpg").read_bytes() == b"a new photo"  # not overwritten
    assert (tmp_path / "out" / "cat" / "cat.jpg").read_bytes() == b"a/cat.jpg"  # not lost
    assert (album / "b" / "cat.jpg").read_bytes() == b"b/cat.jpg"
    assert (album / "a" / "dog.jpg").read_bytes() == b"a/dog.jpg"
    again = cli("sort", "--undo", manifest)
    assert "moved 0 photos back, 2 already in place" in again.stderr


def test_a_move_killed_midway_is_undone_for_the_moves_it_made(album, tmp_path, monkeypatch):
    photos = [album / folder / name for folder in ("a", "b", "c") for name in ("cat.jpg",)]
    results = write_results(tmp_path / "r.jsonl", [record(str(p), "cat") for p in photos])
    real, calls = sorting.move_new, []

    def killed_on_the_third(source: str, target: str) -> None:
        calls.append(source)
        if len(calls) == 3:
            raise KeyboardInterrupt  # after its manifest line, before the move
        real(source, target)

    monkeypatch.setattr(sorting, "move_new", killed_on_the_third)
    assert cli("sort", results, "--into", tmp_path / "out", "--move").exit_code == 130
    assert [p.exists() for p in photos] == [False, False, True]
    (manifest,) = (tmp_path / "out").glob(".vithybrid-sort-*.jsonl")
    with open(manifest, "a") as torn:  # and a line cut mid-write
        torn.write('{"from": "/x", "to": "')
    monkeypatch.undo()
    result = cli("sort", "--undo", manifest)
    assert result.exit_code == 0, result.stderr
    assert "moved 2 photos back, 1 already in place" in result.stderr
    assert [p.read_bytes() for p in photos] == [b"a/cat.jpg", b"b/cat.jpg", b"c/cat.jpg"]


def inserted(record: dict):
    """An edit: `record` as the first move line."""
    return lambda lines: lines[:1] + [json.dumps(record)] + lines[1:]


HAND_EDITS = {
    "bad JSON": (lambda lines: lines[:2] + ["not json"] + lines[2:], ":3: not a manifest line"),
    "to outside": (inserted({"from": "/a", "to": "/etc/passwd"}), "'/etc/passwd' is not inside"),
    "to ..": (inserted({"from": "/a", "to": "OUT/../escape.jpg"}), "escape.jpg' is not inside"),
    "from relative": (
        inserted({"from": "rel.jpg", "to": "OUT/cat/x.jpg"}),
        ':2: a manifest line is {"from": ABSOLUTE',
    ),
    "into edited": (
        lambda lines: [json.dumps({"format": "vithybrid-sort-moves", "into": "/"})] + lines[1:],
        "written for --into '/'",
    ),
    "no header": (lambda lines: lines[1:], ":1: not a move manifest"),
}


@pytest.mark.parametrize("name", HAND_EDITS)
def test_an_undo_manifest_edited_by_hand_is_refused_whole(moved, tmp_path, name):
    manifest, album = moved
    edit, needle = HAND_EDITS[name]
    lines = manifest.read_text().splitlines()
    out = str(tmp_path / "out")
    manifest.write_text("\n".join(edit(lines)).replace("OUT/", out + "/") + "\n")
    before = {name: path.read_bytes() for name, path in files_below(tmp_path).items()}
    result = cli("sort", "--undo", manifest)
    assert_clean_error(result, str(manifest), needle.replace("OUT/", out + "/"))
    assert len(result.stderr.strip().splitlines()) == 1
    assert {name: path.read_bytes() for name, path in files_below(tmp_path).items()} == before
