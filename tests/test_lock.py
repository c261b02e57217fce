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
specs = [arg.split("|") for arg in sys.argv[1:]]  # PATH|OPTION|file or dir
with holding([Target(path, option, kind == "dir") for path, option, kind in specs]):
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
    """Start a process holding the locks of outputs: paths, or (path, option, "dir" or "file")
    triples (give them back: close its stdin, or kill it)."""
    started = []

    def start(*outputs, mode="flock") -> subprocess.Popen:
        specs = [output if isinstance(output, tuple) else (output, "--output", "file")
                 for output in outputs]  # fmt: skip
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD, *("|".join(map(str, spec)) for spec in specs)],
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


def test_classify_on_a_busy_output_stops_before_the_model_loads(
    tmp_path, holder, image, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    Path("out.jsonl").write_text("the first run's file\n")
    first = holder("out.jsonl")
    # A model that does not exist: loading it would be another error, so the lock came first.
    args = ["classify", image, "-o", "out.jsonl", "--model", "no-such-model", "-q"]
    for resume in ([], ["--resume"]):
        result = cli(*args, *resume, code=2)
        assert refusal("out.jsonl", first.pid).fullmatch(result.stderr), result.stderr
    assert Path("out.jsonl").read_text() == "the first run's file\n"
    assert hidden(tmp_path) == [".out.jsonl.lock"]  # no journal started beside it
    assert first.poll() is None


def test_every_command_that_writes_refuses_a_busy_output(tmp_path, holder, image, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = {  # the outputs as the refusal names them: command
        "vectors.npy": ["embed", image, "-o", "vectors.npy"],
        "maps/": ["attention-map", image, "--output-dir", "maps"],
        "map.png": ["attention-map", image, "-o", "map.png"],
        "head.safetensors": ["fit", str(Path(image).parent), "-o", "head.safetensors"],
    }
    option = {"maps/": "--output-dir"}
    first = holder("vectors.npy", ("maps", "--output-dir", "dir"), "map.png", "head.safetensors")
    for output, command in commands.items():
        result = cli(*command, "--model", "no-such-model", code=2)
        expected = refusal(output, first.pid, option.get(output, "--output"))
        assert expected.fullmatch(result.stderr), result.stderr


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


def stalled_classify(tmp_path: Path, count: int, stall_at: int) -> tuple[list[str], list[str]]:
    """`count` images, the one at `stall_at` a FIFO (a run stalls there): (paths, the args of
    a classify of them into tmp_path/out.jsonl, less --model)."""
    paths = make_images(tmp_path / "images", count)
    block_with_fifo(paths[stall_at])
    listing = write_list(tmp_path / "list.txt", paths)
    out = tmp_path / "out.jsonl"
    return paths, ["classify", "--files-from", str(listing), "-o", str(out), "--batch-size", "2"]


@pytest.mark.slow
def test_a_second_run_is_refused_and_the_first_writes_every_row(tmp_path, tiny_checkpoint):
    tiny, stall_at, out, log = str(tiny_checkpoint), 6, tmp_path / "out.jsonl", tmp_path / "log"
    paths, args = stalled_classify(tmp_path, 12, stall_at)
    first = spawn([*args, "--model", tiny, "--workers", "1", "-q"], log)
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
    out, log = tmp_path / "out.jsonl", tmp_path / "log"
    paths, args = stalled_classify(tmp_path, count, stall_at)
    args += ["--model", tiny]
    journal = tmp_path / ".out.jsonl.journal"
    for runs, resume in [(1, []), (2, ["--resume"])]:
        child = spawn([*args, "--workers", "1", "-q", *resume], log)
        # the fresh run writes the inputs before the FIFO; the resume has none left to write
        wait_for(lambda n=runs: journal_entries(out) >= stall_at and len(os.listdir(journal)) == n,
                 child, "the run to reach the FIFO")  # fmt: skip
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert hidden(tmp_path) == [".out.jsonl.journal", ".out.jsonl.lock"]  # stale
    os.unlink(paths[stall_at])
    Path(paths[stall_at]).write_bytes(png_bytes(stall_at))
    resumed = cli(*args, "--resume")
    assert f"{count - stall_at} labeled, 0 failed" in resumed.stderr
    assert [r["path"] for r in read_jsonl(out)] == paths
    cli(*args, "-q")  # anew
    assert [r["path"] for r in read_jsonl(out)] == paths
    assert hidden(tmp_path) == [".out.jsonl.journal"]


def test_the_ray_engine_refuses_a_busy_destination_folder(tmp_path, holder, image, monkeypatch):
    pytest.importorskip("ray.data")
    monkeypatch.chdir(tmp_path)
    first = holder(("parts", "--output", "dir"))
    for command in ("classify", "embed"):
        args = [command, image, "-o", "parts", "--engine", "ray", "--model", "no-such-model"]
        result = cli(*args, code=2)  # before the model loads, and before Ray starts
        assert refusal("parts/", first.pid).fullmatch(result.stderr), result.stderr
    assert first.poll() is None
