"""Tests for vithybrid_cli.outputs: record writers, resume, atomic writes, embedding writer."""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vithybrid_cli.outputs import (
    EmbeddingWriter,
    atomic_write,
    csv_header,
    format_from_path,
    load_done,
    open_record_writer,
    prepare_resume,
    repair_csv,
    repair_jsonl,
    safe_text,
)

REPO = Path(__file__).resolve().parents[1]
BAD_PATH = os.fsdecode(b"photos/caf\xe9.jpg")  # Latin-1 name on a UTF-8 system: lone surrogate


def success(path: str, k: int = 2) -> dict:
    return {
        "path": path,
        "top_k": [{"index": i, "label": f"label {i}", "score": 1.0 / (i + 2)} for i in range(k)],
    }


def failure(path: str) -> dict:
    return {"path": path, "error": "cannot identify image file"}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def run_child(script: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- text helpers


def test_safe_text_escapes_surrogates_and_keeps_plain_text():
    assert safe_text("plain/ünïcode 猫.jpg") == "plain/ünïcode 猫.jpg"
    assert safe_text(BAD_PATH) == "photos/caf\\xe9.jpg"
    recipe = BAD_PATH.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    assert safe_text(BAD_PATH) == recipe
    # Surrogates that surrogateescape cannot map back to a byte must not crash either.
    assert safe_text("a\ud800b") == "a\\ud800b"
    safe_text("\udcff\ud83d\ude00").encode("utf-8")


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        ("out.jsonl", "jsonl"),
        ("OUT.NDJSON", "jsonl"),
        ("a/b.json", "json"),
        ("r.csv", "csv"),
        ("r.txt", None),
        ("noext", None),
        (None, None),
    ],
)
def test_format_from_path(path, fmt):
    assert format_from_path(path) == fmt


# --------------------------------------------------------------------------- record writers


def test_jsonl_file_holds_success_and_error_records(tmp_path):
    out = tmp_path / "r.jsonl"
    with open_record_writer("jsonl", str(out)) as writer:
        writer.write(success("a.jpg"))
        writer.write({"path": "b.jpg", "error": "broken\nfile"})
        writer.write(success(BAD_PATH))
    records = read_jsonl(out)
    assert records[0] == success("a.jpg")
    assert records[1] == {"path": "b.jpg", "error": "broken file"}  # errors stay one line
    assert records[2]["path"] == "photos/caf\\xe9.jpg"


def test_jsonl_to_stream_and_numpy_and_nan_scores():
    stream = io.StringIO()
    record = {
        "path": "x.jpg",
        "top_k": [
            {"index": np.int64(3), "label": "cat", "score": np.float32(0.9)},
            {"index": 4, "label": "dog", "score": float("nan")},
        ],
    }
    with open_record_writer("jsonl", None, stream=stream) as writer:
        writer.write(record)
    parsed = json.loads(stream.getvalue())
    assert parsed["top_k"][0] == {"index": 3, "label": "cat", "score": 0.9}
    assert parsed["top_k"][1]["score"] is None  # NaN is not valid JSON


@pytest.mark.parametrize("to_file", [True, False])
def test_json_is_one_array(tmp_path, to_file):
    out = tmp_path / "r.json"
    stream = io.StringIO()
    writer = open_record_writer("json", str(out) if to_file else None, stream=stream)
    with writer:
        writer.write(success("a.jpg"))
        writer.write(failure(BAD_PATH))
        if to_file:
            assert not out.exists()  # atomic: nothing visible before close
    text = out.read_text(encoding="utf-8") if to_file else stream.getvalue()
    assert json.loads(text) == [success("a.jpg"), failure("photos/caf\\xe9.jpg")]


def test_json_with_no_records_is_empty_array(tmp_path):
    out = tmp_path / "r.json"
    open_record_writer("json", str(out)).close()
    assert json.loads(out.read_text()) == []


def test_csv_layout(tmp_path):
    out = tmp_path / "r.csv"
    with open_record_writer("csv", str(out), top_k=3) as writer:
        writer.write(success("a.jpg", k=3))
        writer.write(success("short.jpg", k=1))
        writer.write(failure(BAD_PATH))
        writer.write(success('odd,"name"\n.jpg', k=1))
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == [
        "path",
        *["label_1", "score_1", "index_1", "label_2", "score_2", "index_2"],
        *["label_3", "score_3", "index_3"],
        "error",
    ]
    assert rows[0] == csv_header(3)
    assert rows[1] == ["a.jpg", "label 0", "0.5", "0", "label 1", repr(1 / 3), "1"] + [
        "label 2",
        "0.25",
        "2",
        "",
    ]
    assert rows[2] == ["short.jpg", "label 0", "0.5", "0"] + [""] * 6 + [""]
    assert rows[3] == ["photos/caf\\xe9.jpg"] + [""] * 9 + ["cannot identify image file"]
    assert rows[4][0] == 'odd,"name"\n.jpg'


def test_csv_to_stream_and_too_many_predictions():
    stream = io.StringIO()
    writer = open_record_writer("csv", None, stream=stream, top_k=1)
    writer.write(success("a.jpg", k=1))
    with pytest.raises(ValueError):
        writer.write(success("b.jpg", k=2))
    writer.close()
    assert list(csv.reader(io.StringIO(stream.getvalue())))[1][:2] == ["a.jpg", "label 0"]


def test_writer_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="CLI"):
        open_record_writer("table", None)
    with pytest.raises(ValueError):
        open_record_writer("xml", None)
    with pytest.raises(ValueError):
        open_record_writer("json", str(tmp_path / "r.json"), resume=True)
    with pytest.raises(ValueError):
        open_record_writer("jsonl", None, resume=True)
    writer = open_record_writer("jsonl", None, stream=io.StringIO())
    writer.close()
    with pytest.raises(ValueError):
        writer.write(success("a.jpg"))


@pytest.mark.parametrize(("fmt", "name"), [("json", "r.json"), ("csv", "r.csv")])
def test_failed_run_leaves_atomic_outputs_untouched(tmp_path, fmt, name):
    out = tmp_path / name
    out.write_text("previous results\n")
    with pytest.raises(RuntimeError), open_record_writer(fmt, str(out)) as writer:
        writer.write(success("a.jpg"))
        raise RuntimeError("interrupted")
    assert out.read_text() == "previous results\n"
    assert leftovers(tmp_path) == []


# --------------------------------------------------------------------------- atomic_write


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


# --------------------------------------------------------------------------- resume (records)


def killed_jsonl(out: Path) -> None:
    """A JSONL as a killed run leaves it: duplicates, an error record, a torn last line."""
    lines = [
        json.dumps(success("a.jpg")),
        json.dumps(failure("b.jpg")),
        json.dumps(success("c.jpg")),
        "not json at all",
        json.dumps(success("a.jpg")),
        json.dumps(success("d.jpg")),
    ]
    torn = json.dumps(success("e.jpg"))[:25]
    out.write_text("\n".join(lines) + "\n" + torn, encoding="utf-8")


def test_repair_and_resume_jsonl(tmp_path):
    out = tmp_path / "r.jsonl"
    killed_jsonl(out)
    assert load_done(str(out)) == {"a.jpg", "c.jpg", "d.jpg"}  # tolerant even before repair
    # dropped: error b, the junk line, the first a (duplicate), the torn e.
    assert repair_jsonl(str(out)) == 4
    assert [r["path"] for r in read_jsonl(out)] == ["c.jpg", "a.jpg", "d.jpg"]
    assert load_done(str(out)) == {"a.jpg", "c.jpg", "d.jpg"}

    inputs = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg"]
    done = prepare_resume(str(out))
    with open_record_writer("jsonl", str(out), resume=True) as writer:
        for path in inputs:
            if path not in done:
                writer.write(failure(path) if path == "f.jpg" else success(path))
    records = read_jsonl(out)
    assert sorted(r["path"] for r in records) == inputs
    assert [r for r in records if "error" in r] == [failure("f.jpg")]


def test_repair_leaves_a_clean_file_alone(tmp_path):
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(success("a.jpg")) + "\n")
    inode = out.stat().st_ino
    assert repair_jsonl(str(out)) == 0
    assert out.stat().st_ino == inode
    assert repair_jsonl(str(tmp_path / "missing.jsonl")) == 0
    assert load_done(str(tmp_path / "missing.jsonl")) == set()


def test_resume_opens_torn_file_safely(tmp_path):
    # The CLI may skip prepare_resume; the writer still must not glue a record onto a torn line.
    out = tmp_path / "r.jsonl"
    killed_jsonl(out)
    with open_record_writer("jsonl", str(out), resume=True) as writer:
        writer.write(success("e.jpg"))
    assert {r["path"] for r in read_jsonl(out)} == {"a.jpg", "c.jpg", "d.jpg", "e.jpg"}


def test_repair_and_resume_csv(tmp_path):
    out = tmp_path / "r.csv"
    with open_record_writer("csv", str(out), top_k=2) as writer:
        writer.write(success("a.jpg"))
        writer.write(failure("b.jpg"))
        writer.write(success("c\n.jpg"))
    with out.open("a", encoding="utf-8") as f:
        f.write('"torn,path.jpg,label 0,0.')
    assert load_done(str(out), "csv") == {"a.jpg", "c\n.jpg"}
    assert repair_csv(str(out)) == 2  # the error row and the torn row
    done = prepare_resume(str(out), "csv")
    with open_record_writer("csv", str(out), resume=True, top_k=2) as writer:
        for path in ["a.jpg", "b.jpg", "c\n.jpg", "torn,path.jpg"]:
            if path not in done:
                writer.write(success(path))
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == csv_header(2)
    assert sorted(r[0] for r in rows[1:]) == ["a.jpg", "b.jpg", "c\n.jpg", "torn,path.jpg"]
    with pytest.raises(ValueError, match="columns"):
        open_record_writer("csv", str(out), resume=True, top_k=3)


JSONL_CHILD = """
import sys, time
from vithybrid_cli.outputs import open_record_writer

out, n = sys.argv[1], int(sys.argv[2])
writer = open_record_writer("jsonl", out)
print("ready", flush=True)
for i in range(n):
    path = f"img_{i:05d}_" + "x" * 60 + ".jpg"
    if i % 13 == 0:
        writer.write({"path": path, "error": "decode failed"})
    else:
        top = [{"index": j, "label": f"label {j}", "score": 0.125} for j in range(5)]
        writer.write({"path": path, "top_k": top})
    busy_until = time.perf_counter() + 0.0003  # "inference": kills land mid-batch
    while time.perf_counter() < busy_until:
        pass
    if i % 50 == 49:  # ~15 kB per batch: the 8 kB buffer spills mid-line, as in real runs
        writer.flush()
writer.close()
print("finished", flush=True)
"""


def kill_after_ready(child: subprocess.Popen, delay: float) -> bool:
    """SIGKILL the child `delay` s after it is ready; True if it died before finishing."""
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(delay)
    child.send_signal(signal.SIGKILL)
    rest = child.stdout.read()
    child.wait()
    return "finished" not in rest


def test_sigkilled_jsonl_run_resumes_without_duplicates(tmp_path):
    rng = random.Random(1234)
    n = 3000
    inputs = [f"img_{i:05d}_" + "x" * 60 + ".jpg" for i in range(n)]
    interrupted = 0
    for trial in range(5):
        out = tmp_path / f"run{trial}.jsonl"
        child = run_child(JSONL_CHILD, str(out), str(n))
        interrupted += kill_after_ready(child, rng.uniform(0.02, 0.7))
        done = prepare_resume(str(out))
        assert done <= set(inputs)
        with open_record_writer("jsonl", str(out), resume=True) as writer:
            for i, path in enumerate(inputs):
                if path not in done:
                    writer.write(failure(path) if i % 26 == 0 else success(path))
        records = read_jsonl(out)  # raises if any line is not valid JSON
        counts = collections.Counter(r["path"] for r in records)
        assert len(records) == n
        assert set(counts) == set(inputs)
        assert max(counts.values()) == 1
        assert sum("error" in r for r in records) == len(range(0, n, 26))
    assert interrupted >= 1


# --------------------------------------------------------------------------- embeddings


def rows_for(indices: list[int], shape: tuple[int, ...] = (4,)) -> np.ndarray:
    """Rows whose values encode their input's index, so order can be checked."""
    base = np.asarray(indices, dtype=np.float32).reshape(-1, *([1] * len(shape)))
    return base + np.arange(np.prod(shape), dtype=np.float32).reshape(shape) / 100


def test_npy_round_trip_with_sidecar(tmp_path):
    target = tmp_path / "vecs.npy"
    names = ["a.jpg", "dir/b.jpg", "new\nline.jpg", BAD_PATH, "e.jpg"]
    with EmbeddingWriter(str(target)) as writer:
        writer.write(names[:2], rows_for([0, 1]))
        assert not target.exists()
        writer.write(names[2:], rows_for([2, 3, 4]).astype(np.float64))
    data = np.load(target)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data, rows_for([0, 1, 2, 3, 4]))
    mapped = np.load(target, mmap_mode="r")
    np.testing.assert_array_equal(mapped[3], rows_for([3])[0])
    lines = (tmp_path / "vecs.paths.txt").read_text(encoding="utf-8").split("\n")
    assert lines == ["a.jpg", "dir/b.jpg", "new\\nline.jpg", "photos/caf\\xe9.jpg", "e.jpg", ""]
    assert leftovers(tmp_path) == []  # partials and temp files are gone


def test_npz_round_trip_with_token_rows(tmp_path):
    target = tmp_path / "vecs.npz"
    with EmbeddingWriter(str(target)) as writer:
        writer.write(["a.jpg", "ünï.jpg"], rows_for([0, 1], (3, 2)))
        writer.write([BAD_PATH], rows_for([2], (3, 2)))
    with np.load(target) as archive:
        np.testing.assert_array_equal(archive["embeddings"], rows_for([0, 1, 2], (3, 2)))
        assert archive["paths"].tolist() == ["a.jpg", "ünï.jpg", "photos/caf\\xe9.jpg"]
    assert leftovers(tmp_path) == []


def test_embedding_writer_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError):
        EmbeddingWriter(str(tmp_path / "vecs.txt"))
    writer = EmbeddingWriter(str(tmp_path / "vecs.npy"))
    with pytest.raises(ValueError):
        writer.write(["a", "b"], rows_for([0]))
    writer.write(["a"], rows_for([0], (4,)))
    with pytest.raises(ValueError, match="row shape"):
        writer.write(["b"], rows_for([1], (5,)))
    writer.close()


@pytest.mark.parametrize("name", ["vecs.npy", "vecs.npz"])
def test_zero_rows_still_write_files(tmp_path, name):
    EmbeddingWriter(str(tmp_path / name)).close()
    if name.endswith(".npy"):
        assert np.load(tmp_path / name).shape == (0,)
        assert (tmp_path / "vecs.paths.txt").read_text() == ""
    else:
        with np.load(tmp_path / name) as archive:
            assert archive["embeddings"].shape == (0,)
            assert archive["paths"].shape == (0,)


def partial(target: Path, suffix: str = "") -> Path:
    return target.with_name(f".{target.name}.partial{suffix}")


def test_resume_from_partials_after_abort(tmp_path):
    target = tmp_path / "vecs.npy"
    writer = EmbeddingWriter(str(target))
    writer.write(["p0", "p1", "p2"], rows_for([0, 1, 2]))
    writer.write(["p3"], rows_for([3]))
    writer.abort()
    assert not target.exists()
    # A kill mid-write: half a row of raw data and a torn path line past the last full row.
    with partial(target).open("ab") as f:
        f.write(b"\0" * 6)
    with partial(target, ".paths").open("ab") as f:
        f.write(b'"p4"\n"p5')

    writer = EmbeddingWriter(str(target), resume=True)
    assert writer.done == {"p0", "p1", "p2", "p3"}
    writer.write(["p4", "p5"], rows_for([4, 5]))
    writer.close()
    np.testing.assert_array_equal(np.load(target), rows_for(list(range(6))))
    assert (tmp_path / "vecs.paths.txt").read_text().split() == [f"p{i}" for i in range(6)]


def test_resume_keeps_only_rows_with_paths(tmp_path):
    target = tmp_path / "vecs.npy"
    writer = EmbeddingWriter(str(target))
    writer.write(["p0", "p1", "p2"], rows_for([0, 1, 2]))
    writer.abort()
    # Paths file lost its last line (e.g. killed between the two writes): row 2 is dropped.
    paths_file = partial(target, ".paths")
    paths_file.write_bytes(b"".join(paths_file.read_bytes().splitlines(keepends=True)[:2]))
    writer = EmbeddingWriter(str(target), resume=True)
    assert writer.done == {"p0", "p1"}
    writer.write(["p2"], rows_for([2]))
    writer.close()
    np.testing.assert_array_equal(np.load(target), rows_for([0, 1, 2]))


@pytest.mark.parametrize("name", ["vecs.npy", "vecs.npz"])
def test_resume_from_finished_file_appends(tmp_path, name):
    target = tmp_path / name
    with EmbeddingWriter(str(target)) as writer:
        writer.write(["a", "line\nbreak"], rows_for([0, 1], (2, 3)))
    writer = EmbeddingWriter(str(target), resume=True)
    assert writer.done == {"a", "line\nbreak"}
    writer.write(["c"], rows_for([2], (2, 3)))
    writer.close()
    if name.endswith(".npy"):
        data = np.load(target)
        paths = (tmp_path / "vecs.paths.txt").read_text().splitlines()
    else:
        with np.load(target) as archive:
            data, paths = archive["embeddings"], archive["paths"].tolist()
    np.testing.assert_array_equal(data, rows_for([0, 1, 2], (2, 3)))
    assert len(paths) == 3 and paths[2] == "c"


def test_without_resume_partials_are_discarded(tmp_path):
    target = tmp_path / "vecs.npy"
    old = EmbeddingWriter(str(target))
    old.write(["old"], rows_for([9]))
    old.abort()
    with EmbeddingWriter(str(target)) as writer:
        assert writer.done == set()
        writer.write(["new"], rows_for([1]))
    np.testing.assert_array_equal(np.load(target), rows_for([1]))
    assert (tmp_path / "vecs.paths.txt").read_text() == "new\n"


def test_exception_in_with_block_keeps_partials(tmp_path):
    target = tmp_path / "vecs.npy"
    with pytest.raises(RuntimeError), EmbeddingWriter(str(target)) as writer:
        writer.write(["a"], rows_for([0]))
        raise RuntimeError("model crashed")
    assert not target.exists()
    assert EmbeddingWriter(str(target), resume=True).done == {"a"}


EMBED_CHILD = """
import sys, time
import numpy as np
from vithybrid_cli.outputs import EmbeddingWriter

out, n = sys.argv[1], int(sys.argv[2])
writer = EmbeddingWriter(out)
print("ready", flush=True)
for start in range(0, n, 16):
    idx = np.arange(start, min(start + 16, n))
    rows = idx[:, None].astype(np.float32) + np.zeros((1, 256), np.float32)
    writer.write([f"img{i}" for i in idx], rows)
    time.sleep(0.002)
writer.close()
print("finished", flush=True)
"""


def test_sigkilled_embedding_run_resumes(tmp_path):
    rng = random.Random(99)
    n = 3000
    interrupted = 0
    for trial in range(3):
        target = tmp_path / f"vecs{trial}.npy"
        child = run_child(EMBED_CHILD, str(target), str(n))
        interrupted += kill_after_ready(child, rng.uniform(0.02, 0.3))
        writer = EmbeddingWriter(str(target), resume=True)
        todo = [i for i in range(n) if f"img{i}" not in writer.done]
        for start in range(0, len(todo), 100):
            batch = todo[start : start + 100]
            rows = np.asarray(batch, np.float32)[:, None] + np.zeros((1, 256), np.float32)
            writer.write([f"img{i}" for i in batch], rows)
        writer.close()
        data = np.load(target, mmap_mode="r")
        paths = target.with_suffix(".paths.txt").read_text().splitlines()
        assert data.shape == (n, 256) and len(paths) == n
        assert sorted(paths) == sorted(f"img{i}" for i in range(n))
        np.testing.assert_array_equal(data[:, 0], [int(p[3:]) for p in paths])
        np.testing.assert_array_equal(data[:, -1], data[:, 0])
    assert interrupted >= 1


MEMORY_CHILD = """
import resource, sys
import numpy as np
from vithybrid_cli.outputs import EmbeddingWriter

out = sys.argv[1]
chunk = np.ones((1000, 512), np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
writer = EmbeddingWriter(out)
for c in range(100):
    writer.write([f"img{c}_{i}" for i in range(1000)], chunk * c)
writer.close()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before, after)
"""


def test_embedding_writer_memory_is_bounded(tmp_path):
    target = tmp_path / "big.npy"  # 100k x 512 float32 = 200 MB
    child = run_child(MEMORY_CHILD, str(target))
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    before_kb, after_kb = map(int, out.split())
    assert (after_kb - before_kb) < 60 * 1024, "peak RSS grew with the data size"
    data = np.load(target, mmap_mode="r")
    assert data.shape == (100_000, 512)
    assert data[-1, 0] == 99 and data[1000, 3] == 1


# --------------------------------------------------------------------------- property test

surrogates = st.integers(0xD800, 0xDFFF).map(chr)
path_text = st.text(st.one_of(st.characters(), surrogates), min_size=1, max_size=30)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(path_text, st.booleans()), max_size=20))
def test_jsonl_round_trip_random_paths(items):
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "r.jsonl")
        with open_record_writer("jsonl", out) as writer:
            for path, ok in items:
                writer.write(success(path) if ok else failure(path))
        with open(out, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        assert [r["path"] for r in records] == [safe_text(p) for p, _ in items]
        assert load_done(out) == {safe_text(p) for p, ok in items if ok}
        repair_jsonl(out)
        assert load_done(out) == {safe_text(p) for p, ok in items if ok}
