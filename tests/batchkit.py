"""Helpers for the batch-run tests (test_batch.py, test_distributed.py): images, CLI runs, kills.

Runs that must be killed go to a subprocess; the rest run in-process (no interpreter start-up).
A run is stopped at a known point by listing a FIFO among its inputs: the decoder blocks opening
it, so everything before it is written and nothing after it, until the test kills the run (or
opens the FIFO for writing, which lets the decoder read an empty file and go on).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from vithybrid_cli.cli import app

TIMEOUT = 120  # seconds: generous, the test machines are shared and slow


def png_bytes(seed: int, size: tuple[int, int] = (32, 32)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_images(directory: Path, count: int, size: tuple[int, int] = (32, 32)) -> list[str]:
    """`count` distinct PNGs img000.png...; their paths (str), in a directory walk's order."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = directory / f"img{i:03d}.png"
        path.write_bytes(png_bytes(i, size))
        paths.append(str(path))
    return paths


def block_with_fifo(path: str) -> None:
    """Replace image `path` by a FIFO: a run decoding it stalls there."""
    os.unlink(path)
    os.mkfifo(path)


def unblock_fifo(path: str) -> None:
    """Let a decoder stuck opening FIFO `path` go on (it reads an empty file)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only with a reader waiting
    os.close(fd)


def feed_fifo(path: str, data: bytes) -> None:
    """Hand `data` to a decoder stuck opening FIFO `path`: it decodes a real image and goes on."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only with a reader waiting
    try:
        os.set_blocking(fd, True)
        os.write(fd, data)  # a small PNG fits the pipe's buffer
    finally:
        os.close(fd)


def restore_image(path: str, seed: int) -> None:
    """Put the real image back where block_with_fifo put a FIFO."""
    os.unlink(path)
    Path(path).write_bytes(png_bytes(seed))


def write_list(path: Path, paths: list[str]) -> Path:
    path.write_bytes(b"".join(os.fsencode(p) + b"\n" for p in paths))
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env.update(extra)
    return env


def default_sigint() -> None:
    """In the child before exec: Ctrl-C does what it does in a terminal.

    A process started with SIGINT ignored (pytest run as a background job of a script, under
    nohup, by some CI runners) passes that on, and Python then leaves SIGINT ignored: the
    SIGINT tests would see the run go on to the end (issue 9's `assert 40 == 10`).
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ignore_sigint() -> None:
    """In the child before exec: as `nohup` starts it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def spawn(
    args: list[str], log: Path, cwd: Path | None = None, sigint: int = signal.SIG_DFL
) -> subprocess.Popen:
    """`python -m vithybrid_cli ARGS` in its own session; stdout+stderr go to `log`.

    SIGINT as in a terminal, or `sigint=signal.SIG_IGN` as under nohup.
    """
    with open(log, "wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "vithybrid_cli", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(),
            cwd=cwd,
            start_new_session=True,
            preexec_fn=default_sigint if sigint == signal.SIG_DFL else ignore_sigint,
        )


def wait_for(condition: Callable[[], bool], child: subprocess.Popen, what: str) -> None:
    """Poll `condition` while `child` runs; fail if it exits first or time runs out.

    A child that reaches the state and exits right away (an interrupted run prints its summary
    and ends) may do both between a look at the state and the look at the child: so the state
    is looked at once more after the child has gone, before that counts as a failure.
    """
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if child.poll() is not None:
            if condition():
                return
            raise AssertionError(f"the run exited ({child.returncode}) before {what}")
        if time.monotonic() > deadline:
            kill_tree(child.pid)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), children first."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal `pid` and everything below it (torchrun starts its workers in new sessions)."""
    for target in [pid, *descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, sig)


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def journal_entries(output: Path) -> int:
    """How many whole entries the journal beside `output` holds (all runs, all ranks)."""
    from vithybrid_cli.pipeline.journal import journal_dir, read_entries

    folder = Path(journal_dir(str(output)))
    files = sorted(folder.iterdir()) if folder.is_dir() else []
    return sum(1 for file in files for _ in read_entries(str(file), payloads=False))


def hidden(directory: Path) -> list[str]:
    """Names starting with a dot in `directory`: only journals may stay after a run."""
    return sorted(name for name in os.listdir(directory) if name.startswith("."))


def read_jsonl(path: Path) -> list[dict]:
    """Every line parsed (raises on any invalid line, a torn last one included)."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "torn last line"
    return [json.loads(line) for line in data.splitlines()]


def cli(*args: str, code: int | None = 0):
    """Run the CLI in-process; check the exit status (None: any)."""
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    if code is not None:
        assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    return result


def top_labels(records: list[dict]) -> dict[str, list[str]]:
    return {r["path"]: [p["label"] for p in r["top_k"]] for r in records if "top_k" in r}
