"""Batch runs that survive faults, junk and scale (issue #5): every result written exactly once.

Kills: a run is stalled at a known input (a FIFO, see batchkit), killed with SIGKILL or SIGINT,
then resumed; the result must hold each input once, every line valid, the same answers as an
uninterrupted run. Hostile inputs go through the whole CLI: each gives a result or a one-line
error and the run goes on. Memory stays flat over 10,000 images.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from batchkit import (
    TIMEOUT,
    block_with_fifo,
    child_env,
    cli,
    feed_fifo,
    hidden,
    journal_entries,
    make_images,
    png_bytes,
    read_jsonl,
    restore_image,
    spawn,
    top_labels,
    unblock_fifo,
    wait_for,
    write_list,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vithybrid_cli.io.outputs import safe_text

N_IMAGES = 40
STALL_AT = 10  # the FIFO's position: with --batch-size 2 the 10 inputs before it get written


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint) -> str:
    return str(tiny_checkpoint)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny):
    """An uninterrupted run over N_IMAGES images: (folder, paths, records, embeddings)."""
    folder = tmp_path_factory.mktemp("reference") / "images"
    paths = make_images(folder, N_IMAGES)
    out = folder.parent / "reference.jsonl"
    cli("classify", folder, "-o", out, "--model", tiny, "--batch-size", "2", "-q")
    vectors = folder.parent / "reference.npy"
    cli("embed", folder, "-o", vectors, "--model", tiny, "--batch-size", "2", "-q")
    return folder, paths, read_jsonl(out), np.load(vectors)


@pytest.fixture
def stalled(tmp_path):
    """A fresh image folder whose input STALL_AT is a FIFO, and a list file naming all inputs."""
    folder = tmp_path / "images"
    paths = make_images(folder, N_IMAGES)
    block_with_fifo(paths[STALL_AT])
    return folder, paths, write_list(tmp_path / "list.txt", paths)


def stop(child, sig: int, fifo: str, log) -> int:
    """Deliver `sig`; for SIGINT wait for the summary, then release the stalled decoder.

    The FIFO is opened only once the run has said it was interrupted: released earlier, the
    decoder would go on while the signal is still on its way, and the test would race it.
    """
    os.kill(child.pid, sig)
    if sig == signal.SIGINT:
        wait_for(lambda: "(interrupted)" in log.read_text(), child, "the interrupted summary")
        deadline = time.monotonic() + 60
        while child.poll() is None and time.monotonic() < deadline:
            # in case the exit waits for the decode thread stuck on the FIFO
            with contextlib.suppress(OSError):
                unblock_fifo(fifo)
            time.sleep(0.05)
    return child.wait(timeout=60)


def test_wait_for_sees_a_state_the_child_reached_just_before_it_exited(tmp_path):
    """The race of issue 19: the interrupted run printed its summary and exited between the
    test's look at the log and its look at the child; wait_for called that a failure."""
    log = tmp_path / "log.txt"
    write = f"import sys; sys.stdin.read(); open({str(log)!r}, 'w').write('(interrupted)')"
    child = subprocess.Popen([sys.executable, "-c", write], stdin=subprocess.PIPE)
    looks = []

    def interrupted() -> bool:
        seen = log.exists() and "(interrupted)" in log.read_text()
        if not looks:  # the first look: the child writes and exits before the next one
            child.stdin.close()
            child.wait(timeout=60)
        looks.append(seen)
        return seen

    wait_for(interrupted, child, "the interrupted summary")
    assert looks == [False, True] and child.returncode == 0


def read_output(out: Path, fmt: str) -> tuple[list[str], dict[str, list[str]]]:
    """(paths in file order, {path: top labels}) of a classify output in any format."""
    if fmt == "jsonl":
        records = read_jsonl(out)
    elif fmt == "json":
        records = json.loads(out.read_text())
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(out).to_pylist()
        return [row["path"] for row in rows], {row["path"]: row["top_k_labels"] for row in rows}
    else:
        with open(out, newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0][0] == "path"
        labels = {row[0]: [row[1 + 3 * r] for r in range(5)] for row in rows[1:]}
        return [row[0] for row in rows[1:]], labels
    return [r["path"] for r in records], top_labels(records)


# --------------------------------------------------------------------------- kill and resume


@pytest.mark.slow
@pytest.mark.parametrize(
    "fmt, sig",
    [("jsonl", signal.SIGKILL), ("jsonl", signal.SIGINT), ("csv", signal.SIGKILL),
     ("json", signal.SIGKILL), ("parquet", signal.SIGKILL)],
    ids=["jsonl-sigkill", "jsonl-sigint", "csv-sigkill", "json-sigkill", "parquet-sigkill"],
)  # fmt: skip
def test_killed_classify_resumes_exactly_once(tmp_path, tiny, reference, stalled, fmt, sig):
    folder, paths, listing = stalled
    out = tmp_path / f"out.{fmt}"
    out.write_text("an earlier run's file\n")  # a kill must leave it as it was
    log = tmp_path / "log.txt"
    args = ["classify", "--files-from", listing, "-o", out, "--model", tiny, "--batch-size", "2"]
    child = spawn([str(a) for a in [*args, "--workers", "1"]], log)
    wait_for(lambda: journal_entries(out) >= STALL_AT, child, "the first results")
    time.sleep(0.2)  # nothing more may come: the next batch waits for the FIFO
    status = stop(child, sig, paths[STALL_AT], log)
    assert journal_entries(out) == STALL_AT  # written as they came: nothing lost but the batch
    if sig == signal.SIGINT:
        assert status == 130
        assert f"{STALL_AT} labeled, 0 failed" in log.read_text()
        assert "(interrupted)" in log.read_text()
    else:
        assert status == -signal.SIGKILL
    assert out.read_text() == "an earlier run's file\n"  # never half-written under its name
    [journal] = (tmp_path / f".out.{fmt}.journal").iterdir()
    with open(journal, "ab") as torn:  # as if the kill had come in the middle of an entry
        torn.write(b'{"index": 10, "path": "')

    restore_image(paths[STALL_AT], STALL_AT)
    result = cli("classify", folder, "-o", out, "--model", tiny, "--batch-size", "2", "--resume")
    assert f"{N_IMAGES - STALL_AT} labeled, 0 failed" in result.stderr  # only what was left

    order, got = read_output(out, fmt)
    assert order == paths  # each once, in input order
    expected = {os.path.basename(p): labels for p, labels in top_labels(reference[2]).items()}
    assert {os.path.basename(p): labels for p, labels in got.items()} == expected
    assert hidden(tmp_path) == [f".out.{fmt}.journal"]  # no temp file left, the journal kept


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, sig", [("vectors.npy", signal.SIGKILL), ("vectors.npy", signal.SIGINT),
                  ("vectors.npz", signal.SIGKILL), ("vectors.parquet", signal.SIGKILL)],
    ids=["npy-sigkill", "npy-sigint", "npz-sigkill", "parquet-sigkill"],
)  # fmt: skip
def test_killed_embed_resumes_row_for_row(tmp_path, tiny, reference, stalled, name, sig):
    folder, paths, listing = stalled
    out = tmp_path / name
    out.write_bytes(b"an earlier run's file")  # a kill must leave it as it was
    log = tmp_path / "log.txt"
    args = ["embed", "--files-from", listing, "-o", out, "--model", tiny, "--batch-size", "2"]
    child = spawn([str(a) for a in [*args, "--workers", "1"]], log)
    wait_for(lambda: journal_entries(out) >= STALL_AT, child, "the first rows")
    time.sleep(0.2)
    status = stop(child, sig, paths[STALL_AT], log)
    assert status == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    if sig == signal.SIGINT:
        assert f"{STALL_AT} embedded, 0 failed" in log.read_text()
    assert out.read_bytes() == b"an earlier run's file"  # never half-written under its name
    assert not (tmp_path / "vectors.paths.txt").exists()
    assert journal_entries(out) == STALL_AT

    restore_image(paths[STALL_AT], STALL_AT)
    cli("embed", folder, "-o", out, "--model", tiny, "--batch-size", "2", "--resume", "-q")
    if name.endswith(".npy"):
        rows = np.load(out)
        assert (tmp_path / "vectors.paths.txt").read_text().splitlines() == paths
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(out)
        assert table["path"].to_pylist() == paths
        rows = table["embedding"].combine_chunks().flatten().to_numpy().reshape(len(paths), -1)
    else:
        with np.load(out) as archive:
            rows, saved_paths = archive["embeddings"], archive["paths"].tolist()
        assert saved_paths == paths
    assert rows.dtype == np.float32 and rows.shape == reference[3].shape
    np.testing.assert_allclose(rows, reference[3], rtol=1e-4, atol=1e-5)
    assert hidden(tmp_path) == [f".{name}.journal"]


@pytest.mark.slow
def test_a_run_started_with_sigint_ignored_goes_on_after_ctrl_c(tmp_path, tiny, stalled):
    """`nohup vithybrid ... &` stays nohup: SIGINT changes nothing, every row is written."""
    folder, paths, listing = stalled
    out, log = tmp_path / "out.jsonl", tmp_path / "log.txt"
    args = ["classify", "--files-from", listing, "-o", out, "--model", tiny, "--batch-size", "2"]
    child = spawn([str(a) for a in [*args, "--workers", "1", "-q"]], log, sigint=signal.SIG_IGN)
    wait_for(lambda: journal_entries(out) >= STALL_AT, child, "the first results")
    os.kill(child.pid, signal.SIGINT)  # ignored: the kernel drops it as it is sent
    feed_fifo(paths[STALL_AT], png_bytes(STALL_AT))
    assert child.wait(timeout=120) == 0, log.read_text()
    assert [r["path"] for r in read_jsonl(out)] == paths


def test_resume_refuses_other_settings_and_goes_on_with_the_same(tmp_path, tiny):
    paths = make_images(tmp_path / "all", 8, (16, 16))
    half = tmp_path / "half"
    half.mkdir()
    for path in paths[:5]:
        os.symlink(path, half / os.path.basename(path))
    out, exact = tmp_path / "e.npy", ["--model", tiny, "--dtype", "float32"]
    cli("embed", half, "-o", out, *exact, "--pool", "cls", "-q")
    refused = cli("embed", half, "-o", out, *exact, "--pool", "mean", "--normalize", "--resume",
                  code=2)  # fmt: skip
    assert "--resume: " in refused.stderr and "with --pool cls, not mean" in refused.stderr
    assert "without --normalize, not with" in refused.stderr
    assert np.load(out).shape[0] == 5  # untouched
    other_size = cli("embed", half, "-o", out, *exact, "--image-size", "32",
                     "--interpolate-pos-encoding", "--resume", code=2)  # fmt: skip
    assert "with --image-size 64x64, not 32x32" in other_size.stderr
    other_dtype = cli("embed", half, "-o", out, "--model", tiny, "--dtype", "bfloat16",
                      "--resume", code=2)  # fmt: skip
    assert "with --dtype float32, not bfloat16" in other_dtype.stderr
    more = [*map(str, sorted(half.iterdir())), *paths[5:8]]
    result = cli("embed", *more, "-o", out, *exact, "--resume")
    assert "3 embedded, 0 failed" in result.stderr and "wrote 8 rows" in result.stderr
    cli("embed", *more, "-o", tmp_path / "at-once.npy", *exact, "-q")
    np.testing.assert_allclose(np.load(out), np.load(tmp_path / "at-once.npy"), atol=1e-5)


def test_resume_of_a_file_without_journal_is_one_clear_line(tmp_path, tiny):
    out = tmp_path / "labels.jsonl"
    out.write_text("{}\n")
    [image] = make_images(tmp_path / "one", 1)
    result = cli("classify", image, "-o", out, "--model", tiny, "--resume", code=2)
    [line] = result.stderr.splitlines()
    assert line.startswith("error: --resume: ") and "no journal" in line


def test_first_result_is_written_before_the_walk_ends(tmp_path, tiny, monkeypatch):
    """-q with a file output neither counts the inputs nor waits for the walk to finish."""
    import vithybrid_cli.data.inputs as inputs

    folder = tmp_path / "many"
    make_images(folder, 36, (8, 8))
    out = tmp_path / "out.jsonl"
    walks, written_at_end = [], []
    real = inputs.iter_inputs

    def watched(*args, **kwargs):
        walks.append(1)
        yield from real(*args, **kwargs)
        written_at_end.append(journal_entries(out))

    monkeypatch.setattr(inputs, "iter_inputs", watched)
    cli("classify", folder, "-o", out, "--model", tiny, "--batch-size", "4", "--workers", "1",
        "-q")  # fmt: skip
    assert len(walks) == 1  # walked once: nothing counted
    # the runner reads at most 2 batches + 1 worker ahead of what it has written
    assert written_at_end[0] >= 36 - (2 * 4 + 1) - 4
    assert len(read_jsonl(out)) == 36


def test_a_progress_bar_counts_the_inputs_first(tmp_path, tiny_model):
    from vithybrid_cli.data.items import InputItem
    from vithybrid_cli.pipeline.job import CollectOutput, run_job
    from vithybrid_cli.pipeline.runner import Runner
    from vithybrid_cli.pipeline.tasks import classify_task

    paths = make_images(tmp_path / "few", 5, (8, 8))
    walks = []

    def inputs():
        walks.append(1)
        return (InputItem(p) for p in paths)

    class Bar:
        wants_total, total, seen = True, None, 0

        def start(self, total):
            self.total = total

        def advance(self, result):
            self.seen += 1

    bar = Bar()
    run_job(Runner(tiny_model), inputs, classify_task(2, {}), CollectOutput(), progress=bar)
    assert len(walks) == 2 and bar.total == bar.seen == 5


@contextlib.contextmanager
def sigint_disposition(handler) -> Iterator[None]:
    """SIGINT handled by `handler` inside the block, whatever this process inherited (a runner
    started as a script's background job or under nohup starts with SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_ctrl_c_stops_the_job_and_an_ignored_sigint_stays_ignored():
    from vithybrid_cli.pipeline.job import stop_on_interrupt

    with sigint_disposition(signal.default_int_handler):  # Ctrl-C in a terminal
        with stop_on_interrupt() as stopping, pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)  # to this thread: the handler runs right away
        assert stopping.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    with sigint_disposition(signal.SIG_IGN):  # nohup stays nohup
        with stop_on_interrupt() as stopping:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert not stopping.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


@pytest.mark.slow
@pytest.mark.parametrize("inherited", [signal.SIG_IGN, signal.SIG_DFL], ids=["ignored", "default"])
def test_the_ctrl_c_test_passes_however_the_runner_was_started(inherited):
    """The test above in a pytest started with SIGINT ignored (a script's `pytest &`) or not."""
    test = f"{__file__}::test_ctrl_c_stops_the_job_and_an_ignored_sigint_stays_ignored"
    check = "import signal; assert signal.getsignal(signal.SIGINT) is {}".format(
        "signal.SIG_IGN" if inherited is signal.SIG_IGN else "signal.default_int_handler"
    )
    command = [sys.executable, "-c", f"{check}; import pytest; raise SystemExit(pytest.main())"]
    result = subprocess.run(
        [*command, test, "-p", "no:cacheprovider"],
        preexec_fn=lambda: signal.signal(signal.SIGINT, inherited),
        cwd=Path(__file__).parent.parent,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


# --------------------------------------------------------------------------- hostile inputs


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (its data would inflate to GBs)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)


def hostile_folder(root: Path) -> tuple[Path, dict[str, str | None]]:
    """A folder of hostile files; {path: expected error fragment, or None for a result}."""
    folder = root / "hostile"
    folder.mkdir()
    good = png_bytes(1)
    files = {
        "good.png": (good, None),
        "bomb.png": (decompression_bomb(), "too large"),
        "empty.jpg": (b"", "empty file"),
        "truncated.png": (good[: len(good) // 2], "trunc"),
        "png_named.jpg": (good, None),
        "text.jpg": (b"just some text, not an image\n", "not a recognized image"),
        "dot.png": (png_bytes(2, (1, 1)), None),
        "strip.png": (png_bytes(3, (1, 4000)), None),
        "locked.png": (good, "permission denied"),
    }
    expected = {}
    for name, (data, error) in files.items():
        (folder / name).write_bytes(data)
        expected[str(folder / name)] = error
    raw = os.fsencode(folder) + b"/caf\xe9 \xff.png"  # not valid UTF-8
    with open(raw, "wb") as f:
        f.write(good)
    expected[os.fsdecode(raw)] = None
    os.symlink(folder, folder / "loop")  # a directory cycle
    os.symlink("self.png", folder / "self.png")  # a symlink to itself (ELOOP)
    return folder, expected


ODD_NAMES = [b"bad\xff\xfe.png", b"bad\xff.png", b"bad\xfe.png", b"new\nline.png", b"plain.png"]


def test_names_not_utf8_or_with_a_newline_are_found_again_from_what_was_written(
    tmp_path, tiny, monkeypatch
):
    """Such names are written escaped (safe_text, path_line); report, duplicates and --resume
    find the files again from that text, run where classify and embed ran (relative paths)."""
    folder = tmp_path / "odd"
    folder.mkdir()
    for name in ODD_NAMES:  # five byte copies
        with open(os.fsencode(folder) + b"/" + name, "wb") as file:
            file.write(png_bytes(7))
    monkeypatch.chdir(tmp_path)
    cli("classify", "odd", "-o", "labels.jsonl", "--model", tiny, "-q")
    paths = [r["path"] for r in read_jsonl(tmp_path / "labels.jsonl")]
    assert "odd/bad\\xff\\xfe.png" in paths and "odd/new\nline.png" in paths
    result = cli("report", "labels.jsonl", "-o", "page.html")
    assert "5 made, 0 reused in" in result.stderr and "missing" not in result.stderr
    again = cli("classify", "odd", "-o", "labels.jsonl", "--model", tiny, "--resume")
    assert "0 labeled, 0 failed" in again.stderr  # all five were done: none again
    assert sorted(r["path"] for r in read_jsonl(tmp_path / "labels.jsonl")) == sorted(paths)

    from vithybrid_cli.io.outputs import recorded_text  # here: the test fails, not the module

    cli("embed", "odd", "-o", "v.npy", "--model", tiny, "-q")
    cli("duplicates", "v.npy", "-t", "0.99", "-o", "groups.jsonl", "--keep", "first")
    [group] = read_jsonl(tmp_path / "groups.jsonl")
    assert group["exact"] is True and group["copies"] == [group["paths"]]
    # the .npy's paths.txt holds the newline as \\n: the same file, written another way
    assert sorted(map(recorded_text, group["paths"])) == sorted(map(recorded_text, paths))


@pytest.fixture
def locked_file(monkeypatch):
    """Make files named locked.png unreadable: chmod 000, or (as root, who may read anything)
    a PermissionError from the decoder's open()."""
    import builtins
    import importlib

    # (not `from vithybrid_cli import preprocess`: the package also has a function of that name)
    preprocess = importlib.import_module("vithybrid_cli.data.preprocess")

    def lock(path: Path) -> None:
        os.chmod(path, 0)

    if os.geteuid() == 0:

        def refuse(file, *args, **kwargs):
            if os.fsdecode(file).endswith("locked.png"):
                raise PermissionError(13, "Permission denied", os.fsdecode(file))
            return builtins.open(file, *args, **kwargs)

        monkeypatch.setattr(preprocess, "open", refuse, raising=False)
    return lock


@pytest.mark.slow
def test_hostile_inputs_through_the_cli(tmp_path, tiny, locked_file):
    folder, expected = hostile_folder(tmp_path)
    locked_file(folder / "locked.png")
    out = tmp_path / "out.jsonl"
    started = time.monotonic()
    result = cli("classify", folder, "-o", out, "--model", tiny, "--batch-size", "3", code=1)
    assert time.monotonic() - started < 60  # the bomb is refused, not decoded
    records = read_jsonl(out)
    by_path = {r["path"]: r for r in records}
    keys = {safe_text(path): error for path, error in expected.items()}
    assert sorted(by_path) == sorted(keys) and len(records) == len(keys)  # each file once
    for key, error in keys.items():
        record = by_path[key]
        if error is None:
            assert len(record["top_k"]) == 5, record
        else:
            assert error in record["error"].lower() and "\n" not in record["error"], record
    odd = [r["path"] for r in records if r["path"].endswith("\\xff.png")]
    assert odd == [safe_text(os.fsdecode(os.fsencode(folder) + b"/caf\xe9 \xff.png"))]
    assert "caf\\xe9 \\xff.png" in odd[0]  # escaped: the file's bytes, readable back
    assert "too large" in result.stderr and "5 labeled, 5 failed" in result.stderr

    # --resume retries only the failures: still one record per file, no duplicates
    cli("classify", folder, "-o", out, "--model", tiny, "--resume", "-q", code=1)
    again = read_jsonl(out)
    assert Counter(r["path"] for r in again) == Counter(list(keys))
    assert top_labels(again) == top_labels(records)

    vectors = tmp_path / "v.npz"
    cli("embed", folder, "-o", vectors, "--model", tiny, "-q", code=1)
    with np.load(vectors) as saved:
        assert sorted(saved["paths"].tolist()) == sorted(k for k, e in keys.items() if e is None)
        assert saved["embeddings"].shape[0] == 5


# --------------------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def tiny_model(tiny):
    from vithybrid_cli.model.weights import load_model

    return load_model(tiny)


KINDS = ["good", "good", "empty", "text", "truncated", "missing", "input-error", "bomb"]


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), max_size=12),
    batch_size=st.integers(1, 4),
    workers=st.integers(1, 3),
    shard=st.sampled_from([(0, 1), (0, 2), (1, 2), (2, 3)]),
)
def test_runner_one_result_per_input_in_order(tmp_path, tiny_model, kinds, batch_size, workers,
                                              shard):  # fmt: skip
    from vithybrid_cli.data.items import InputError, InputItem
    from vithybrid_cli.pipeline.job import select
    from vithybrid_cli.pipeline.runner import Runner, RunOptions
    from vithybrid_cli.pipeline.tasks import classify_task

    good = png_bytes(0)
    contents = {
        "empty": b"",
        "text": b"hello",
        "truncated": good[:40],
        "bomb": decompression_bomb(20000, 20000),
    }
    folder = tmp_path / f"case{time.monotonic_ns()}"
    folder.mkdir()
    items = []
    for i, kind in enumerate(kinds):
        path = str(folder / f"{i}.png")
        if kind == "input-error":
            items.append(InputError(path, "named but absent"))
            continue
        if kind != "missing":
            Path(path).write_bytes(good if kind == "good" else contents[kind])
        items.append(InputItem(path))
    options = RunOptions(batch_size=batch_size, workers=workers)
    pairs = select(iter(items), set(), *shard)
    results = list(Runner(tiny_model, options).run_indexed(pairs, classify_task(3, {})))
    rank, world = shard
    mine = list(range(rank, len(kinds), world))
    assert [r.index for r in results] == mine
    assert [r.path for r in results] == [items[i].path for i in mine]
    for result in results:
        assert result.ok == (kinds[result.index] == "good"), (result, kinds)
        assert result.ok or (result.error and "\n" not in result.error)


# --------------------------------------------------------------------------- bounded memory


def test_runner_skips_non_cls_work_only_for_cls_tasks(tiny_model, monkeypatch):
    """classify and CLS/pooler embeddings let the last block run for the CLS token alone;
    mean pooling, tokens and attention maps need every token."""
    import numpy as np

    from vithybrid_cli.pipeline.runner import Runner, RunOptions
    from vithybrid_cli.pipeline.tasks import attention_task, classify_task, embed_task

    seen = []
    forward = type(tiny_model).forward

    def spy(self, pixels, **kwargs):
        seen.append(kwargs.get("cls_only", False))
        return forward(self, pixels, **kwargs)

    monkeypatch.setattr(type(tiny_model), "forward", spy)
    pixels = np.zeros((2, 3, 64, 64), np.float32)
    cases = [
        (classify_task(3, {}), False, True),
        (embed_task("cls"), False, True),
        (embed_task("mean"), False, False),
        (embed_task("cls", tokens=True), False, False),
        (attention_task("rollout"), True, False),
    ]
    for task, attentions, expected in cases:
        runner = Runner(tiny_model, RunOptions(output_attentions=attentions))
        assert len(runner.forward(pixels, task)) == 2
        assert seen.pop() is expected
    rows = Runner(tiny_model).forward(pixels, embed_task("cls", tokens=True))
    assert rows[0].shape[0] == 1 + 16  # every token came back


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/status")
def test_memory_stays_flat_over_10000_images(tmp_path, tiny):
    count = 10_000
    folder = tmp_path / "many"
    folder.mkdir()
    data = png_bytes(0, (8, 8))
    for i in range(count):
        (folder / f"{i:05d}.png").write_bytes(data)
    out = tmp_path / "out.jsonl"
    args = ["classify", str(folder), "-o", str(out), "--model", tiny, "--batch-size", "32"]
    child = spawn([*args, "--workers", "2", "-q"], tmp_path / "log.txt")
    samples: list[tuple[int, int]] = []  # (records written, RSS KiB)
    while child.poll() is None:
        rss, done = rss_kib(child.pid), journal_entries(out)
        if rss is not None and done:
            samples.append((done, rss))
        time.sleep(0.05)
    assert child.returncode == 0, (tmp_path / "log.txt").read_text()
    assert len(read_jsonl(out)) == count
    # While records are coming (the interpreter's teardown after the last one allocates briefly)
    first = [rss for done, rss in samples if done < count // 2]
    second = [rss for done, rss in samples if count // 2 <= done < count]
    assert len(first) >= 3 and len(second) >= 3, samples
    assert max(second) <= max(first) + 30 * 1024, (max(first), max(second))
