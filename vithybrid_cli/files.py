"""Atomic files: a temp file beside the target, renamed over it on success, removed on failure;
and the file name put back on an OSError that lacks it (a full disk on write).

Pure file-system helpers, below everything: outputs, heads, reports and search indexes write
through them.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any


def new_file_mode() -> int:
    """Permissions an ordinary new file gets (temp files are created 0600)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


class AtomicFile:
    """A temp file beside `path` that replaces `path` on commit() and vanishes on discard()."""

    def __init__(self, path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> None:
        self.path = os.path.abspath(os.fspath(path))
        directory, name = os.path.split(self.path)
        if "b" not in mode:
            open_kwargs.setdefault("encoding", "utf-8")
        # The handle outlives __init__ (commit/discard close it), hence no `with`.
        try:
            self.file: IO[Any] = tempfile.NamedTemporaryFile(  # noqa: SIM115
                mode, dir=directory, prefix=f".{name}.", suffix=".tmp", delete=False, **open_kwargs
            )
        except OSError as error:  # the temp file is ours: name the user's file, and its folder
            message = f"{error.strerror} (cannot create files in {os.path.dirname(path) or '.'})"
            raise type(error)(error.errno, message, os.fspath(path)) from error
        self.done = False

    def commit(self) -> None:
        if self.done:
            return
        self.done = True
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            try:
                mode = stat.S_IMODE(os.stat(self.path).st_mode)
            except FileNotFoundError:
                mode = new_file_mode()
            os.chmod(self.file.name, mode)
            os.replace(self.file.name, self.path)
        except BaseException:
            self.remove()
            raise
        with contextlib.suppress(OSError):  # makes the rename durable, where directories open
            fd = os.open(os.path.dirname(self.path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def discard(self) -> None:
        if not self.done:
            self.done = True
            self.remove()

    def remove(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.file.name)


@contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """Write `path` all-or-nothing: a temp file in the same folder, renamed on success."""
    target = AtomicFile(path, mode, **open_kwargs)
    try:
        yield target.file
    except BaseException:
        target.discard()
        raise
    target.commit()


@contextmanager
def naming(path: str) -> Iterator[None]:
    """OSErrors without a file name (a full disk on write) get `path`, the file the user named."""
    try:
        yield
    except OSError as error:
        if error.filename is None and error.errno is not None:
            raise type(error)(error.errno, error.strerror, path) from error
        raise
