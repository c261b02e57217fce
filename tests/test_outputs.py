"""Tests for vithybrid_cli.io.outputs: the record schema, the writer table, atomic files."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vithybrid_cli.files import atomic_write, naming
from vithybrid_cli.io.outputs import (
    SUFFIXES,
    WRITERS,
    csv_header,
    format_from_path,
    open_writer,
    record_of,
    safe_text,
)

REPO = Path(__file__).resolve().parents[1]
BAD_PATH = os.fsdecode(b"photos/caf\xe9.jpg")  # Latin-1 name on a UTF-8 system: lone surrogate


def success(path: str, k: int = 2) -> dict:
    return record_of(path, [(i, f"label {i}", 1.0 / (i + 2)) for i in range(k)])


def failure(path: str) -> dict:
    return record_of(path, error="cannot identify image file")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def write_all(kind: str, fmt: str, target, items, **options):
    writer = open_writer(kind, fmt, target, **options)
    for item in items:
        writer.write(*item) if kind == "embeddings" else writer.write(item)
    writer.close()


# --------------------------------------------------------------------------- text and schema


def test_safe_text_escapes_surrogates_and_keeps_plain_text():
    assert safe_text("plain/ünïcode 猫.jpg") == "plain/ünïcode 猫.jpg"
    assert safe_text(BAD_PATH) == "photos/caf\\xe9.jpg"
    recipe = BAD_PATH.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    assert safe_text(BAD_PATH) == recipe
    assert safe_text("a\ud800b") == "a\\ud800b"  # not a smuggled byte: still no crash
    safe_text("\udcff\ud83d\ude00").encode("utf-8")


def test_recorded_text_finds_the_file_an_escaped_path_names(tmp_path):
    from vithybrid_cli.io.outputs import local_candidates, path_line, recorded_text

    assert recorded_text(safe_text(BAD_PATH)) == BAD_PATH
    assert recorded_text(safe_text("a\ud800b")) == "a\ud800b"
    line = path_line(safe_text("new\nline\r.jpg")).removesuffix("\n")
    assert recorded_text(line) == "new\nline\r.jpg"  # a .paths.txt's line, back
    assert recorded_text("plain/ünïcode 猫.jpg") == "plain/ünïcode 猫.jpg"
    literal = tmp_path / "lit\\xff.jpg"  # a name that holds the escape's characters itself
    literal.write_bytes(b"x")
    assert local_candidates(str(literal))[0] == str(literal)  # as written first: found as is
    found = local_candidates("a\\xff.jpg", ["base"])
    assert found == ["a\\xff.jpg", "base/a\\xff.jpg", "a\udcff.jpg", "base/a\udcff.jpg"]


@pytest.mark.parametrize(
    ("path", "fmt"),
    [("out.jsonl", "jsonl"), ("OUT.NDJSON", "jsonl"), ("a/b.json", "json"), ("r.csv", "csv"),
     ("v.npy", "npy"), ("v.NPZ", "npz"), ("r.txt", None), ("noext", None), (None, None)],
)  # fmt: skip
def test_format_from_path(path, fmt):
    assert format_from_path(path) == fmt


def test_record_schema():
    record = record_of(BAD_PATH, [(np.int64(3), "cat", np.float32(0.9)), (4, "dog", float("nan"))])
    assert record == {
        "path": "photos/caf\\xe9.jpg",
        "top_k": [
            {"index": 3, "label": "cat", "score": 0.9},  # float32 0.9 written as 0.9
            {"index": 4, "label": "dog", "score": None},  # NaN is not valid JSON
        ],
    }
    assert record_of("b.jpg", error="broken\nfile") == {"path": "b.jpg", "error": "broken file"}
    assert record_of("c.jpg", {"head": "x", "value": 1.5}) == {"path": "c.jpg", "head": "x",
                                                               "value": 1.5}  # fmt: skip


# --------------------------------------------------------------------------- the table


def test_every_suffix_has_a_writer_and_every_writer_a_suffix():
    for fmt in SUFFIXES.values():
        assert any(key[1] == fmt for key in WRITERS)
    for _, fmt in WRITERS:
        assert fmt in SUFFIXES.values()
    with pytest.raises(ValueError, match=r"\.jsonl"):
        open_writer("records", "npy", "out.npy")
    with pytest.raises(ValueError, match=r"\.npy"):
        open_writer("embeddings", "csv", "out.csv")


# --------------------------------------------------------------------------- record writers


def test_jsonl_file_and_stream(tmp_path):
    records = [success("a.jpg"), failure("b.jpg"), success(BAD_PATH)]
    out = tmp_path / "r.jsonl"
    write_all("records", "jsonl", str(out), records)
    assert read_jsonl(out) == records
    stream = io.StringIO()
    write_all("records", "jsonl", stream, records)
    assert [json.loads(line) for line in stream.getvalue().splitlines()] == records


@pytest.mark.parametrize("to_file", [True, False])
def test_json_is_one_array(tmp_path, to_file):
    out, stream = tmp_path / "r.json", io.StringIO()
    writer = open_writer("records", "json", str(out) if to_file else stream)
    writer.write(success("a.jpg"))
    writer.write(failure(BAD_PATH))
    assert not out.exists() and stream.getvalue() == ""  # whole or nothing
    writer.close()
    text = out.read_text(encoding="utf-8") if to_file else stream.getvalue()
    assert json.loads(text) == [success("a.jpg"), failure(BAD_PATH)]


def test_json_with_no_records_is_empty_array(tmp_path):
    out = tmp_path / "r.json"
    open_writer("records", "json", str(out)).close()
    assert json.loads(out.read_text()) == []


def test_csv_layout(tmp_path):
    out = tmp_path / "r.csv"
    records = [success("a.jpg", k=3), success("short.jpg", k=1), failure(BAD_PATH)]
    write_all("records", "csv", str(out), [*records, success('odd,"name"\n.jpg', k=1)], top_k=3)
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert (
        rows[0]
        == csv_header(3)
        == [
            "path",
            *["label_1", "score_1", "index_1", "label_2", "score_2", "index_2"],
            *["label_3", "score_3", "index_3"],
            "error",
        ]
    )
    third = ["label 2", "0.25", "2", ""]
    assert rows[1] == ["a.jpg", "label 0", "0.5", "0", "label 1", repr(1 / 3), "1", *third]
    assert rows[2] == ["short.jpg", "label 0", "0.5", "0"] + [""] * 6 + [""]
    assert rows[3] == ["photos/caf\\xe9.jpg"] + [""] * 9 + ["cannot identify image file"]
    assert rows[4][0] == 'odd,"name"\n.jpg'


def test_csv_too_many_predictions():
    writer = open_writer("records", "csv", io.StringIO(), top_k=1)
    with pytest.raises(ValueError):
        writer.write(success("b.jpg", k=2))


@pytest.mark.parametrize(
    ("kind", "fmt", "item"),
    [("records", "json", success("a")), ("records", "csv", success("a")),
     ("records", "jsonl", success("a")), ("embeddings", "npy", ("a", np.ones(3))),
     ("embeddings", "npz", ("a", np.ones(3)))],
)  # fmt: skip
def test_abort_leaves_the_target_as_it_was(tmp_path, kind, fmt, item):
    out = tmp_path / f"r.{fmt}"
    out.write_text("previous results\n")
    writer = open_writer(kind, fmt, str(out))
    writer.write(*item) if kind == "embeddings" else writer.write(item)
    writer.abort()
    assert out.read_text() == "previous results\n"
    assert leftovers(tmp_path) == [] and sorted(os.listdir(tmp_path)) == [out.name]


# --------------------------------------------------------------------------- atomic files


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    with atomic_write(target) as f:
        f.write("new ü")
        assert target.read_text() == "old"
    assert target.read_text(encoding="utf-8") == "new ü"
    assert leftovers(tmp_path) == []


def test_atomic_write_keeps_target_on_error(tmp_path):
    target = tmp_path / "t.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyError), atomic_write(target, "wb") as f:
        f.write(b"half written")
        raise KeyError("boom")
    assert target.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_write_new_file_gets_normal_permissions(tmp_path):
    target = tmp_path / "new.txt"
    with atomic_write(target) as f:
        f.write("x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's 0600


def test_naming_puts_the_file_into_a_nameless_os_error():
    with pytest.raises(OSError) as caught, naming("out.jsonl"):
        raise OSError(28, "No space left on device")
    assert caught.value.filename == "out.jsonl" and caught.value.errno == 28
    with pytest.raises(OSError) as caught, naming("out.jsonl"):
        raise FileNotFoundError(2, "No such file or directory", "other.txt")
    assert caught.value.filename == "other.txt"  # a named one keeps its own name


# --------------------------------------------------------------------------- embedding writers


def rows_for(indices: list[int], shape: tuple[int, ...] = (4,)) -> np.ndarray:
    """Rows whose values encode their input's index, so order can be checked."""
    base = np.asarray(indices, dtype=np.float32).reshape(-1, *([1] * len(shape)))
    return base + np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 100


def test_npy_round_trip_with_sidecar(tmp_path):
    target = tmp_path / "vecs.npy"
    names = ["a.jpg", "dir/b.jpg", "new\nline.jpg", BAD_PATH, "e.jpg"]
    writer = open_writer("embeddings", "npy", str(target))
    for name, row in zip(names, rows_for(range(5)).astype(np.float64), strict=True):
        writer.write(name, row)
    assert not target.exists()
    writer.close()
    data = np.load(target)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, rows_for(range(5)))
    np.testing.assert_array_equal(np.load(target, mmap_mode="r")[3], rows_for([3])[0])
    lines = (tmp_path / "vecs.paths.txt").read_text(encoding="utf-8").split("\n")
    assert lines == ["a.jpg", "dir/b.jpg", "new\\nline.jpg", "photos/caf\\xe9.jpg", "e.jpg", ""]
    assert leftovers(tmp_path) == []


def test_npz_round_trip_with_token_rows(tmp_path):
    target = tmp_path / "vecs.npz"
    items = zip(["a.jpg", "ünï.jpg", BAD_PATH], rows_for([0, 1, 2], (3, 2)), strict=True)
    write_all("embeddings", "npz", str(target), items)
    with np.load(target) as archive:
        np.testing.assert_array_equal(archive["embeddings"], rows_for([0, 1, 2], (3, 2)))
        assert archive["paths"].tolist() == ["a.jpg", "ünï.jpg", "photos/caf\\xe9.jpg"]
    assert sorted(os.listdir(tmp_path)) == ["vecs.npz"]


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_embedding_rows_keep_one_shape(tmp_path, fmt):
    writer = open_writer("embeddings", fmt, str(tmp_path / f"v.{fmt}"))
    writer.write("a", rows_for([0], (4,))[0])
    with pytest.raises(ValueError, match="row shape"):
        writer.write("b", rows_for([1], (5,))[0])
    with pytest.raises(ValueError, match="no values"):
        open_writer("embeddings", fmt, str(tmp_path / f"w.{fmt}")).write("c", np.ones((0,)))
    writer.abort()


@pytest.mark.parametrize("name", ["vecs.npy", "vecs.npz"])
def test_zero_rows_still_write_files(tmp_path, name):
    open_writer("embeddings", format_from_path(name), str(tmp_path / name)).close()
    if name.endswith(".npy"):
        assert np.load(tmp_path / name).shape == (0,)
        assert (tmp_path / "vecs.paths.txt").read_text() == ""
    else:
        with np.load(tmp_path / name) as archive:
            assert archive["embeddings"].shape == (0,)
            assert archive["paths"].shape == (0,)


MEMORY_CHILD = """
import resource, sys
import numpy as np
from vithybrid_cli.io.outputs import open_writer

out, fmt = sys.argv[1], sys.argv[2]
row = np.ones(512, np.float32)
writer = open_writer("embeddings", fmt, out)
writer.write("warm-up", row * 0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for i in range(1, 100_000):
    writer.write(f"img{i}", row * (i // 1000))
writer.close()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_embedding_writer_memory_is_bounded(tmp_path, fmt):
    target = tmp_path / f"big.{fmt}"  # 100k x 512 float32 = 200 MB
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(MEMORY_CHILD), str(target), fmt],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert child.returncode == 0, child.stderr
    before_kb, after_kb = map(int, child.stdout.split())
    assert (after_kb - before_kb) < 60 * 1024, "peak RSS grew with the data size"
    data = np.load(target, mmap_mode="r") if fmt == "npy" else np.load(target)["embeddings"]
    assert data.shape == (100_000, 512)
    assert data[-1, 0] == 99 and data[1000, 3] == 1


# --------------------------------------------------------------------------- property test

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
path_text = st.text(st.one_of(st.characters(), surrogates), min_size=1, max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(path_text, st.booleans()), max_size=20))
def test_every_format_takes_any_path(items):
    with tempfile.TemporaryDirectory() as directory:
        records = [success(p) if ok else failure(p) for p, ok in items]
        for fmt in ("jsonl", "csv", "json"):
            write_all("records", fmt, os.path.join(directory, f"r.{fmt}"), records, top_k=2)
        with open(os.path.join(directory, "r.jsonl"), encoding="utf-8") as f:
            assert [json.loads(line)["path"] for line in f] == [safe_text(p) for p, _ in items]
        if not any("\\" in p for p, _ in items):  # no backslash of its own: read back exactly
            from vithybrid_cli.io.outputs import recorded_text

            with open(os.path.join(directory, "r.jsonl"), encoding="utf-8") as f:
                assert [recorded_text(json.loads(line)["path"]) for line in f] == [
                    p for p, _ in items
                ]
        if not any("\r" in p for p, _ in items):  # a lone CR is csv's own row end
            with open(os.path.join(directory, "r.csv"), encoding="utf-8", newline="") as f:
                assert [row[0] for row in csv.reader(f)][1:] == [safe_text(p) for p, _ in items]
        vectors = [(p, np.ones(2)) for p, _ in items]
        write_all("embeddings", "npz", os.path.join(directory, "v.npz"), vectors)
        with np.load(os.path.join(directory, "v.npz")) as archive:  # numpy drops trailing NULs
            assert archive["paths"].tolist() == [safe_text(p).rstrip("\0") for p, _ in items]
