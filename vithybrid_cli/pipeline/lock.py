"""One run per output: an exclusive lock, held for the run's whole life, that dies with it.

A run that writes a file (or a folder of files) takes the lock of that output before it loads
the model, so a second run on the same output (another terminal, a cron job overlapping its
previous run) stops at once with one line instead of sharing the journal and losing results:

    out.jsonl is being written by another vithybrid run (pid 1234, started 12:03:07); ...

The lock is `fcntl.flock` on a small file beside the output, ``.NAME.lock`` (for a folder,
``DIR/.vithybrid.lock``), which records who holds it. The kernel drops a flock when its process
ends however it ends, SIGKILL included, so a killed run leaves nothing that blocks the next one
(its file stays, stale, and the next run takes it over). A run that ends normally deletes it.

Where flock does not work (some network filesystems answer ENOLCK or EOPNOTSUPP), or where
VITHYBRID_LOCK=file asks for it (flock on NFS may be local to one machine: runs on two machines
would not see each other's), the lock file itself is the lock: created exclusively (O_EXCL), and
refused while it names a process that is still alive on this machine (on another machine, as
long as it exists: delete it by hand if that machine died).

Under torchrun the ranks of one run share their output: rank 0 takes the lock and the ranks
agree (an all-reduce) to go on or to stop together. A process may take a lock it already holds
again (the CLI takes it before loading the model, the journaled output takes it when it opens).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..data.items import display_path
from .journal import Job, SingleProcess

DIRECTORY_LOCK = ".vithybrid.lock"
# flock's answers on filesystems that do not support it: fall back to the lock file alone
NO_FLOCK = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
CREATE = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
READ_HOLDER_S = 2.0  # how long a refused run waits for the holder to write its pid


class OutputBusy(ValueError):
    """Another run holds the output's lock (a ValueError: one line and exit 2 in the CLI)."""


@dataclass(frozen=True)
class Target:
    """An output a run writes: a file, or a folder of files (attention-map --output-dir)."""

    path: str
    option: str = "--output"  # named in the refusal: "choose another --output"
    directory: bool = False

    @property
    def lock_path(self) -> str:
        if self.directory:
            return os.path.join(os.path.abspath(self.path), DIRECTORY_LOCK)
        folder, name = os.path.split(os.path.abspath(self.path))
        return os.path.join(folder, f".{name}.lock")


def holder_line() -> bytes:
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    return json.dumps(info).encode("ascii") + b"\n"


def read_holder(path: str) -> dict[str, Any] | None:
    """The holder a lock file names, or None when it is empty, torn or gone."""
    with contextlib.suppress(OSError, ValueError):
        with open(path, "rb") as file:
            holder = json.loads(file.read())
        if isinstance(holder, dict) and isinstance(holder.get("pid"), int):
            return holder
    return None


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def is_local(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname()


def busy(target: Target, holder: dict[str, Any] | None) -> OutputBusy:
    """The one line a refused run prints."""
    name = display_path(target.path.rstrip(os.sep) + (os.sep if target.directory else ""))
    if holder is None:
        who = "pid unknown"
    else:
        started = datetime.fromtimestamp(float(holder.get("started", 0)))
        when = started.strftime("%H:%M:%S" if started.date() == datetime.now().date() else "%c")
        host = "" if is_local(holder) else f" on {holder.get('host')}"
        who = f"pid {holder['pid']}{host}, started {when}"
    return OutputBusy(
        f"{name} is being written by another vithybrid run ({who}); "
        f"wait for it, or choose another {target.option}"
    )


class OutputLock:
    """The lock of one output, taken by `acquire` (or OutputBusy) and given back by `release`."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.path = target.lock_path
        self.fd: int | None = None

    def acquire(self) -> None:
        if self.target.directory:
            os.makedirs(self.target.path, exist_ok=True)
        try:
            if os.environ.get("VITHYBRID_LOCK", "flock") == "file" or not self._flock():
                self._exclusive_file()
        except OSError as error:
            if error.filename is None or os.fspath(error.filename) != self.path:
                raise
            # The lock file is ours, not the user's: name their output, and where it failed.
            folder = (
                self.target.path if self.target.directory else os.path.dirname(self.target.path)
            )
            message = f"{error.strerror} (cannot create files in {folder or '.'})"
            raise type(error)(error.errno, message, self.target.path) from error

    def _flock(self) -> bool:
        """Take the lock with flock; False where flock does not work here (nothing taken)."""
        import fcntl

        while True:
            try:
                fd, created = os.open(self.path, CREATE | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR | os.O_CLOEXEC), False
                except FileNotFoundError:
                    continue  # deleted by its holder meanwhile
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = self._wait_for_holder()
                if holder is None and not os.path.exists(self.path):
                    continue  # released while we looked: try again
                raise busy(self.target, holder) from None
            except OSError as error:
                if error.errno not in NO_FLOCK:
                    os.close(fd)
                    raise
                if not created:
                    os.close(fd)
                    return False
                break  # created exclusively: that is the fallback's lock already
            except BaseException:
                os.close(fd)
                raise
            # The last holder deletes the file before it lets go: a lock on a deleted file is
            # nobody's, take the file that is there now instead.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder_line(), 0)
        self.fd = fd
        return True

    def _exclusive_file(self) -> None:
        """The fallback without flock: the file's existence is the lock, while its pid lives."""
        while True:
            try:
                fd = os.open(self.path, CREATE | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = self._wait_for_holder()
                if holder is None and not os.path.exists(self.path):
                    continue
                # stale: its run was killed (or died before it could write its pid)
                stale = holder is None or (is_local(holder) and not is_alive(holder["pid"]))
                if not stale:
                    raise busy(self.target, holder) from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # nothing blocks the next run
                continue
            os.write(fd, holder_line())
            self.fd = fd
            return

    def _wait_for_holder(self) -> dict[str, Any] | None:
        """The holder named in the lock file, waiting briefly for a holder that has just taken
        the lock and not yet written its pid (None: the file is gone or stays empty)."""
        deadline = time.monotonic() + READ_HOLDER_S
        while True:
            holder = read_holder(self.path)
            if holder is not None or not os.path.exists(self.path):
                return holder
            if time.monotonic() > deadline:
                return None
            time.sleep(0.01)

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # before letting go: see _flock
        os.close(self.fd)
        self.fd = None


# ---------------------------------------------------------------------------- held locks

_held: dict[str, tuple[OutputLock, int, int]] = {}  # lock path -> (lock, thread, times taken)
_guard = threading.Lock()


def take(target: Target) -> None:
    """Take `target`'s lock, or take it once more when this thread holds it already."""
    key = target.lock_path
    with _guard:
        lock, thread, count = _held.get(key, (None, 0, 0))
        if lock is not None and thread == threading.get_ident():
            _held[key] = (lock, thread, count + 1)
            return
    if lock is not None:  # another thread of this process writes it
        raise busy(target, read_holder(key))
    lock = OutputLock(target)
    lock.acquire()
    with _guard:
        _held[key] = (lock, threading.get_ident(), 1)


def give_back(target: Target) -> None:
    key = target.lock_path
    with _guard:
        lock, thread, count = _held.pop(key)
        if count > 1:
            _held[key] = (lock, thread, count - 1)
            return
    lock.release()


@contextlib.contextmanager
def holding(targets: Sequence[Target], job: Job | None = None) -> Iterator[None]:
    """Hold every target's lock inside the block (rank 0 takes them; all ranks stop together).

    Raises OutputBusy (on every rank) when another run holds one of them.
    """
    job = job or SingleProcess()
    taken: list[Target] = []
    refusal: OutputBusy | None = None
    try:
        if job.rank == 0:
            try:
                for target in targets:
                    take(target)
                    taken.append(target)
            except OutputBusy as error:
                refusal = error
        (refused,) = job.all_sum(int(refusal is not None))
        if refusal is not None:
            raise refusal
        if refused:  # another rank (rank 0) was refused: say the same line
            held = [target for target in targets if os.path.exists(target.lock_path)]
            first = (held or list(targets))[0]
            raise busy(first, read_holder(first.lock_path))
        yield
    finally:
        for target in reversed(taken):
            give_back(target)
