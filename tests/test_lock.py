"""Two runs on one output (issue 21): the second stops before the model loads, with one line;
the first is untouched and writes every row; a killed run leaves nothing that blocks the next.

The first run is either a small process that only holds the lock (`holder`: fast) or a real
classify stalled at a FIFO among its inputs (batchkit), released by feeding the FIFO the image.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from batchkit import (
    block_with_fifo,
    child_env,
    cli,
    feed_fifo,
    hidden,
    journal_entries,
    make_images,
    png_bytes,
    read_jsonl,
    spawn,
    wait_for,
    write_list,
)

from vithybrid_cli.pipeline import lock
from vithybrid_cli.pipeline.lock import OutputBusy, Target, holding

HOLD = """
import sys
from vithybrid_cli.pipeline.lock import Target, holding
paths, option, directory = sys.argv[1].split(","), sys.argv[2], sys.argv[3] == "dir"
with holding([Target(path, option, directory) for path in paths]):
    print("held", flush=True)
    sys.stdin.read()
"""


def refusal(name: str, pid: int, option: str = "--output") -> re.Pattern:
    return re.compile(
        re.escape(f"error: {name} is being written by another vithybrid run (pid {pid}, ")
        + r"started \d\d:\d\d:\d\d\); "
        + re.escape(f"wait for it, or choose another {option}")
        + "\n"
    )


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock of `path` (give it back: close its stdin, or kill it)."""
    started = []

    def start(path, option="--output", directory=False, mode="flock") -> subprocess.Popen:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path), option, "dir" if directory else "file"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(VITHYBRID_LOCK=mode, PYTHONPATH=os.pathsep.join(sys.path)),
        )
        started.append(child)
        assert child.stdout.readline() == b"held\n"  # it holds the lock now
        return child

    yield start
    for child in started:
        if child.poll() is None:
            child.kill()
        child.wait()


@pytest.fixture
def image(tmp_path) -> str:
    [path] = make_images(tmp_path / "one", 1, (16, 16))
    return path


@pytest.mark.parametrize("resume", [False, True], ids=["fresh", "resume"])
def test_classify_on_a_busy_output_stops_before_the_model_loads(
    tmp_path, holder, image, monkeypatch, resume
):
    monkeypatch.chdir(tmp_path)
    Path("out.jsonl").write_text("the first run's file\n")
    first = holder("out.jsonl")
    # A model that does not exist: loading it would be another error, so the lock came first.
    args = ["classify", image, "-o", "out.jsonl", "--model", "no-such-model", "-q"]
    result = cli(*args, *(["--resume"] if resume else []), code=2)
    assert refusal("out.jsonl", first.pid).fullmatch(result.stderr), result.stderr
    assert Path("out.jsonl").read_text() == "the first run's file\n"
    assert hidden(tmp_path) == [".out.jsonl.lock"]  # no journal started beside it
    assert first.poll() is None


@pytest.mark.parametrize(
    "command, output, option, directory",
    [
        (["embed", "-o", "vectors.npy"], "vectors.npy", "--output", False),
        (["attention-map", "--output-dir", "maps"], "maps/", "--output-dir", True),
        (["attention-map", "-o", "map.png"], "map.png", "--output", False),
        (["fit", "-o", "head.safetensors"], "head.safetensors", "--output", False),
    ],
    ids=["embed-npy", "attention-map-dir", "attention-map-png", "fit"],
)
def test_every_command_that_writes_refuses_a_busy_output(
    tmp_path, holder, image, monkeypatch, command, output, option, directory
):
    monkeypatch.chdir(tmp_path)
    first = holder(output.rstrip("/"), option, directory)
    source = str(Path(image).parent) if command[0] == "fit" else image
    result = cli(command[0], source, *command[1:], "--model", "no-such-model", code=2)
    assert refusal(output, first.pid, option).fullmatch(result.stderr), result.stderr


@pytest.mark.parametrize("mode", ["flock", "file"])
def test_a_killed_run_leaves_nothing_that_blocks_the_next(tmp_path, holder, monkeypatch, mode):
    monkeypatch.setenv("VITHYBRID_LOCK", mode)
    out = tmp_path / "out.jsonl"
    first = holder(out, mode=mode)
    with pytest.raises(OutputBusy, match=f"pid {first.pid}, started"), holding([Target(str(out))]):
        pass
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert os.path.exists(Target(str(out)).lock_path)  # stale: its pid is gone
    with holding([Target(str(out))]):
        assert f'"pid": {os.getpid()}' in Path(Target(str(out)).lock_path).read_text()
    assert hidden(tmp_path) == []  # given back: the lock file went with it


def test_without_flock_a_live_holder_still_refuses(tmp_path, holder, monkeypatch):
    """Where flock fails (ENOLCK on some network filesystems) the lock file alone decides."""
    import fcntl

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    out = tmp_path / "out.jsonl"
    first = holder(out, mode="file")
    with pytest.raises(OutputBusy, match=f"pid {first.pid}, started"), holding([Target(str(out))]):
        pass
    first.stdin.close()  # the first run ends normally: it deletes its lock file
    assert first.wait() == 0
    assert hidden(tmp_path) == []
    with holding([Target(str(out))]):
        pass


def test_one_thread_may_take_its_lock_again_another_thread_may_not(tmp_path):
    target = Target(str(tmp_path / "out.jsonl"))
    refused: list[BaseException] = []

    def other_thread() -> None:
        try:
            with holding([target]):
                pass
        except OutputBusy as error:
            refused.append(error)

    with holding([target]), holding([target]):  # the CLI, then the journaled output
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert os.path.exists(target.lock_path)
    assert len(refused) == 1 and f"pid {os.getpid()}" in str(refused[0])
    assert not os.path.exists(target.lock_path) and not lock._held


# --------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_a_second_run_is_refused_and_the_first_writes_every_row(tmp_path, tiny_checkpoint):
    tiny, count, stall_at = str(tiny_checkpoint), 12, 6
    paths = make_images(tmp_path / "images", count)
    block_with_fifo(paths[stall_at])
    listing = write_list(tmp_path / "list.txt", paths)
    out, log = tmp_path / "out.jsonl", tmp_path / "log.txt"
    args = ["classify", "--files-from", listing, "-o", out, "--model", tiny, "--batch-size", "2"]
    first = spawn([str(a) for a in [*args, "--workers", "1", "-q"]], log)
    wait_for(lambda: journal_entries(out) >= stall_at, first, "the first results")

    others = make_images(tmp_path / "others", 2)
    for resume in ([], ["--resume"]):
        result = cli("classify", *others, "-o", out, "--model", tiny, *resume, code=2)
        assert refusal(str(out), first.pid).fullmatch(result.stderr), result.stderr
    assert journal_entries(out) == stall_at  # the first run's journal is as it was

    feed_fifo(paths[stall_at], png_bytes(stall_at))  # the stalled image arrives after all
    assert first.wait(timeout=120) == 0, log.read_text()
    records = read_jsonl(out)
    assert [r["path"] for r in records] == paths and all("top_k" in r for r in records)
    assert hidden(tmp_path) == [".out.jsonl.journal"]  # the lock file went with the run


@pytest.mark.slow
def test_after_a_sigkill_a_fresh_run_and_a_resume_both_work(tmp_path, tiny_checkpoint):
    tiny, count, stall_at = str(tiny_checkpoint), 8, 4
    paths = make_images(tmp_path / "images", count)
    block_with_fifo(paths[stall_at])
    listing = write_list(tmp_path / "list.txt", paths)
    out, log = tmp_path / "out.jsonl", tmp_path / "log.txt"
    args = ["classify", "--files-from", listing, "-o", out, "--model", tiny, "--batch-size", "2"]
    journal = tmp_path / ".out.jsonl.journal"
    for runs, resume in [(1, []), (2, ["--resume"])]:
        child = spawn([str(a) for a in [*args, "--workers", "1", "-q", *resume]], log)
        # the fresh run writes the inputs before the FIFO; the resume has none left to write
        wait_for(lambda n=runs: journal_entries(out) >= stall_at and len(os.listdir(journal)) == n,
                 child, "the run to reach the FIFO")  # fmt: skip
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert hidden(tmp_path) == [".out.jsonl.journal", ".out.jsonl.lock"]  # stale
    os.unlink(paths[stall_at])
    Path(paths[stall_at]).write_bytes(png_bytes(stall_at))
    resumed = cli("classify", "--files-from", listing, "-o", out, "--model", tiny, "--resume")
    assert f"{count - stall_at} labeled, 0 failed" in resumed.stderr
    assert [r["path"] for r in read_jsonl(out)] == paths
    cli("classify", "--files-from", listing, "-o", out, "--model", tiny, "-q")  # anew
    assert [r["path"] for r in read_jsonl(out)] == paths
    assert hidden(tmp_path) == [".out.jsonl.journal"]
