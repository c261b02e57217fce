"""Stdin and list files: `-`'s one image read from stdin (stdin_item), and the specs of a
--files-from list (a file or stdin), one per line (read_list).
"""

from __future__ import annotations

import functools
import io
import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from .items import InputError, InputItem, os_message
from .sources import RemoteOptions, SourceError, read_capped

STDIN = "-"


def stdin_item(
    stdin: TextIO | None, options: RemoteOptions, *, list_on_stdin: bool
) -> InputItem | InputError:
    """`-`: the image piped into `stdin` (None: sys.stdin), its bytes read once; an error when
    stdin is a terminal or holds the --files-from list (`list_on_stdin`)."""
    if list_on_stdin:
        return InputError(STDIN, "stdin holds the --files-from list, not an image")
    stream = stdin if stdin is not None else sys.stdin
    if stream is None or _isatty(stream):
        return InputError(STDIN, "stdin is a terminal: pipe an image into it")
    data = _read_stdin(stream, options)
    if isinstance(data, SourceError):
        return InputError(STDIN, data.message)
    return InputItem(STDIN, functools.partial(io.BytesIO, data))


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


@functools.lru_cache(maxsize=1)
def _read_stdin(stream: Any, options: RemoteOptions) -> bytes | SourceError:
    """stdin's bytes, read once per stream (counting the inputs and running them both expand)."""
    binary = getattr(stream, "buffer", stream)
    try:
        data = read_capped(binary, options)
    except SourceError as error:
        return error
    return data if isinstance(data, bytes) else os.fsencode(data)


def read_list(files_from: str, stdin: TextIO | None) -> Iterator[str | InputError]:
    """Specs from a list file, one per line; blank lines and '#' comments skipped."""
    if files_from == "-":
        yield from _list_lines(_lines_of(stdin if stdin is not None else sys.stdin))
        return
    try:
        handle = open(files_from, "rb")  # noqa: SIM115 - closed below, after a lazy read
    except OSError as error:
        yield InputError(files_from, f"cannot read list file: {os_message(error)}")
        return
    with handle:
        yield from _list_lines(os.fsdecode(line) for line in handle)


def _lines_of(stream: TextIO) -> Iterator[str]:
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:  # bytes keep non-UTF-8 names intact whatever the stream's encoding
        return (os.fsdecode(line) for line in buffer)
    return iter(stream)


def _list_lines(lines: Iterable[str]) -> Iterator[str]:
    for line in lines:
        spec = line.strip()
        if spec and not spec.startswith("#"):
            yield spec
