"""Tar archives (WebDataset shards) as images: a local uncompressed archive is indexed by its
headers, each member read when opened (so members skipped by a resume or left to another torchrun
rank cost no reading); other archives (compressed, downloaded, in a bucket) are read as a stream,
one member at a time. A member's path is `ARCHIVE/MEMBER`.
"""

from __future__ import annotations

import functools
import io
import itertools
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from .formats import known_extension, sniff_image
from .items import InputError, InputItem, Scope, os_message
from .sources import SourceError, TarMemberOpener, index_tar, iter_tar


def expand_local_tar(path: str, scope: Scope) -> Iterator[InputItem | InputError]:
    """A local archive's image members; an uncompressed one is indexed by its headers alone."""
    if path.lower().endswith(".tar"):
        indexed = _expand_indexed_tar(path, scope)
        if indexed is not None:
            yield from indexed
            return
    yield from expand_tar(path, lambda: open(path, "rb"), scope)  # noqa: SIM115 - closed there


def _expand_indexed_tar(path: str, scope: Scope) -> Iterator[Any] | None:
    """An uncompressed archive's members as items that read their bytes when opened, or None
    when `path` is no such archive (a compressed one named .tar: read as a stream instead)."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    except OSError as error:
        return iter([InputError(path, os_message(error))])
    members = index_tar(file, scope.options, _wanted_member)
    try:
        first = next(members, None)
    except SourceError:
        file.close()
        return None

    def items() -> Iterator[InputItem | InputError]:
        with file:
            if first is None:
                yield InputError(path, "archive contains no images")
                return
            try:
                for name, place in itertools.chain([first], members):
                    if scope.skips_undecodable(name):
                        continue
                    if isinstance(place, SourceError):
                        yield InputError(f"{path}/{name}", place.message)
                    elif isinstance(place, bytes):
                        yield InputItem(f"{path}/{name}", functools.partial(io.BytesIO, place))
                    else:
                        yield InputItem(f"{path}/{name}", TarMemberOpener(path, *place))
            except SourceError as error:
                yield InputError(path, error.message)

    return items()


def expand_tar(
    archive: str, open_stream: Callable[[], BinaryIO], scope: Scope
) -> Iterator[InputItem | InputError]:
    """Each image member of `archive` as an item holding its bytes, path `ARCHIVE/MEMBER`.

    The archive is read as the stream is consumed; a broken archive is one error after the
    members read so far, and an unreadable member's error comes from decoding it.
    """
    found = False
    try:
        stream = open_stream()
    except SourceError as error:
        yield InputError(archive, error.message)
        return
    except OSError as error:
        yield InputError(archive, os_message(error))
        return
    with stream:
        try:
            for name, data in iter_tar(stream, scope.options, _wanted_member):
                found = True
                if scope.skips_undecodable(name):
                    continue
                path = f"{archive}/{name}"
                if isinstance(data, SourceError):
                    yield InputError(path, data.message)
                else:
                    yield InputItem(path, functools.partial(io.BytesIO, data))
        except SourceError as error:
            yield InputError(archive, error.message)
            return
    if not found:
        yield InputError(archive, "archive contains no images")


def _wanted_member(name: str, head: bytes) -> bool:
    # Hidden members (macOS' ._name.jpg resource forks, .git/...) are skipped, as a walk does.
    if any(part.startswith(".") for part in name.split("/")):
        return False
    return known_extension(name) or sniff_image(head)
