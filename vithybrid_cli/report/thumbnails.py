"""Thumbnails of the images records name, made once, in parallel, through the input layer.

A record's path is what classify was given: a local file (relative to where classify ran: it
is looked up from the current folder, then from each folder the caller names), a URL, an
object-store URL or a tar member (`shard.tar/member.jpg`). Each is opened the way classify
opened it (data.inputs; an archive is read once for all its members) and decoded by
preprocess.load_image, so EXIF orientation, modes and reduced-size JPEG decoding all apply.

A thumbnail's file name is a hash of the record's path and, for local files and archives, the
file's size and modification time: a rerun finds the thumbnails it made and opens nothing, and
an edited image gets a fresh one. The folder belongs to one page: thumbnails that page no longer
shows (an image removed from the results, edited, or another --thumbnail size) are deleted when
it is made again; nothing else in the folder is touched.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.inputs import iter_inputs
from ..data.items import InputItem
from ..data.lists import STDIN
from ..data.sources import is_remote, is_tar_name
from ..io.outputs import local_candidates

THUMBNAIL_SIZE = 256
NOT_FOUND = "image not found"
ARCHIVE_HINT = re.compile(r"\.(tar|tgz|tbz2?|txz)(\.\w+)?/", re.IGNORECASE)  # a cheap first look
SUFFIXES = {"webp": ".webp", "jpeg": ".jpg"}
# Originals a browser shows as they are, for the larger view of a local image.
BROWSER_IMAGES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".gif", ".webp", ".bmp"})


@dataclass
class Thumbnail:
    """Where a record's thumbnail is (a file in the folder), or why there is none."""

    file: str | None = None  # the name inside the thumbnail folder
    reason: str | None = None  # the image is gone, unreadable, or never kept (stdin)
    original: str | None = None  # a local original a browser can show, for the larger view


@dataclass
class ThumbnailStats:
    made: int = 0
    reused: int = 0
    missing: int = 0
    not_found: int = 0  # of the missing: local paths found nowhere (another folder, gone since)
    removed: int = 0  # thumbnails of an earlier run this one no longer shows


@dataclass
class _Source:
    """Where a record's image is: a local file, a member of an archive, or a URL."""

    path: str  # as in the record
    local: str | None = None  # a local file to open
    archive: str | None = None  # the archive holding it (local or remote)
    member: str = ""  # its name inside the archive
    stamp: str = ""  # size and mtime of the local file or archive
    reason: str | None = None
    key: str = field(init=False, default="")


def make_thumbnails(
    paths: Iterable[str],
    folder: str | os.PathLike[str],
    *,
    bases: Iterable[str | os.PathLike[str]] = (),
    size: int = THUMBNAIL_SIZE,
    fmt: str = "webp",
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Thumbnail], ThumbnailStats]:
    """A Thumbnail for each of `paths` (record paths; relative ones are looked up in the
    current folder, then in each of `bases`), made in `folder` unless there already."""
    if fmt not in SUFFIXES:
        raise ValueError(f"thumbnails are {' or '.join(SUFFIXES)}, not {fmt!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    suffix = SUFFIXES[fmt]
    base_dirs = [os.fspath(base) for base in bases]
    sources = {path: _locate(path, base_dirs) for path in dict.fromkeys(paths)}
    result: dict[str, Thumbnail] = {}
    stats = ThumbnailStats()
    todo: list[_Source] = []
    for source in sources.values():
        if source.reason is not None:
            result[source.path] = Thumbnail(reason=source.reason)
            stats.missing += 1
            stats.not_found += source.reason == NOT_FOUND
            continue
        digest = hashlib.sha1(f"{source.path}\0{source.stamp}\0{size}".encode("utf-8", "replace"))
        source.key = digest.hexdigest()[:24] + suffix
        original = _original(source)
        if (folder / source.key).exists():
            result[source.path] = Thumbnail(source.key, original=original)
            stats.reused += 1
        else:
            result[source.path] = Thumbnail(original=original)
            todo.append(source)
    total, done = len(todo), 0
    if progress is not None:
        progress(0, total)
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        limit = 4 * pool._max_workers  # items in flight: bounds memory on archive streams
        pending: set[Future] = set()

        def finish(futures: Iterable[Future]) -> None:
            nonlocal done
            for future in futures:
                path, reason = future.result()
                if reason is None:
                    result[path].file = sources[path].key
                    stats.made += 1
                else:
                    result[path].reason, result[path].original = reason, None
                    stats.missing += 1
                done += 1
                if progress is not None:
                    progress(done, total)

        for item, source in _open_all(todo):
            if isinstance(item, str):  # the archive did not hold it, or could not be read
                result[source.path].reason = item
                stats.missing += 1
                done += 1
                continue
            pending.add(pool.submit(_thumbnail, item, source, folder / source.key, size, fmt))
            if len(pending) >= limit:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                finish(finished)
        finish(pending)
    stats.removed = remove_unused(folder, {t.file for t in result.values() if t.file})
    return result, stats


THUMBNAIL_SUFFIXES = "|".join(re.escape(suffix) for suffix in SUFFIXES.values())
THUMBNAIL_NAME = re.compile(rf"[0-9a-f]{{24}}({THUMBNAIL_SUFFIXES})")


def remove_unused(folder: Path, used: set[str]) -> int:
    """Delete the thumbnails in `folder` (files named as make_thumbnails names them) that are
    not in `used`; how many. Any other file there is the user's and stays."""
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name in used or not THUMBNAIL_NAME.fullmatch(entry.name):
                continue
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:  # another run removed it first
                continue
    return removed


def _locate(path: str, bases: list[str]) -> _Source:
    if path == STDIN:
        return _Source(path, reason="read from stdin: the image was not kept")
    if is_remote(path):
        archive = _archive_prefix(path)
        return _Source(path, archive=archive, member=path[len(archive or "") + 1 :])
    candidates = local_candidates(path, bases)  # as search.grouping.local_file looks
    for candidate in candidates:
        try:
            info = os.stat(candidate)
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(info.st_mode):
            return _Source(path, local=candidate, stamp=f"{info.st_size}:{info.st_mtime_ns}")
    for candidate in candidates:  # shard.tar/member.jpg
        archive = _archive_prefix(candidate)
        if archive and os.path.isfile(archive):
            info = os.stat(archive)
            stamp = f"{info.st_size}:{info.st_mtime_ns}"
            member = candidate[len(archive) + 1 :]
            return _Source(path, archive=archive, member=member, stamp=stamp)
    return _Source(path, reason=NOT_FOUND)


def _archive_prefix(path: str) -> str | None:
    """`shard.tar` of `shard.tar/dir/member.jpg`, or None."""
    if not ARCHIVE_HINT.search(path):
        return None
    parts = path.split("/")
    for end in range(len(parts) - 1, 0, -1):
        prefix = "/".join(parts[:end])
        if is_tar_name(prefix):
            return prefix
    return None


def _original(source: _Source) -> str | None:
    if source.local and Path(source.local).suffix.lower() in BROWSER_IMAGES:
        return os.path.abspath(source.local)
    return None


def _open_all(sources: list[_Source]) -> Iterator[tuple[InputItem | str, _Source]]:
    """An InputItem for each source (or the reason there is none), archives read once each."""
    archives: dict[str, dict[str, _Source]] = {}
    for source in sources:
        if source.local is not None:
            yield InputItem(source.local), source
        elif source.archive is None:  # a URL: the input layer downloads it when opened
            items = list(iter_inputs([source.path]))
            first = items[0] if items else None
            yield (first if isinstance(first, InputItem) else _reason(first)), source
        else:
            archives.setdefault(source.archive, {})[source.member] = source
    for archive, by_member in archives.items():
        for item in iter_inputs([archive]):  # members come as `ARCHIVE/MEMBER`
            source = by_member.pop(item.path[len(archive) + 1 :], None)
            if source is not None:
                yield (item if isinstance(item, InputItem) else _reason(item)), source
            if not by_member:
                break
        for source in by_member.values():
            yield "not found in its archive", source


def _reason(error: Any) -> str:
    return getattr(error, "message", None) or "no image"


def _thumbnail(item: InputItem, source: _Source, target: Path, size: int, fmt: str) -> tuple:
    """(record path, None) once `target` is written, or (record path, why not)."""
    from PIL import Image

    from ..data.preprocess import DRAFT_OVERSAMPLE, ImageError, load_image

    # A JPEG decodes at reduced size (its DCT scaling) as long as it still covers the thumbnail:
    # a 1600x1200 photo decodes at 400x300, 48 -> 33 ms a thumbnail, decode to WebP (one
    # thread, busy machine), against 800x600 when covering twice the size.
    side = -(-size // DRAFT_OVERSAMPLE)
    try:
        image = load_image(item, min_size=(side, side))
    except ImageError as error:
        return source.path, error.message
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    # written beside and renamed: a killed run never leaves a half thumbnail to be reused
    # WebP's method 2 encodes twice as fast as its default for the same size, at 256 px
    options = {"method": 2} if fmt == "webp" else {}
    image.save(partial, format=fmt.upper(), quality=82, **options)
    os.replace(partial, target)
    return source.path, None
