"""Turn what the user named (files, directories, globs, list files) into a stream of images.

Everything is lazy: directories are walked one directory listing at a time, so the first image of
a huge tree arrives at once and memory stays bounded by the tree's depth and widest directory.
Paths stay `str` as the OS gave them (undecodable bytes as surrogates, see os.fsdecode), so they
still open; display_path() makes them printable.
"""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TextIO

logger = logging.getLogger(__name__)

# Formats Pillow decodes without plugins; HEIC/AVIF need extra packages, so they are left out.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".tif",
        ".tiff",
        ".webp",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".ico",
    }
)

_GLOB_MAGIC = re.compile(r"[*?[]")
_SNIFF_BYTES = 12
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class InputItem:
    """A file to process."""

    path: str


@dataclass(frozen=True)
class InputError:
    """Something the user named that yields no image; reported as an error record."""

    path: str
    message: str


def display_path(path: str) -> str:
    """`path` made printable and JSON-safe: undecodable bytes and control chars as \\xNN."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # lone surrogates that did not come from the file system
        raw = path.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "backslashreplace")
    return _CONTROL_CHARS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


def iter_inputs(
    specs: Iterable[str], *, files_from: str | None = None, stdin: TextIO | None = None
) -> Iterator[InputItem | InputError]:
    """Images named by `specs`, then by the lines of `files_from` ("-": `stdin`), in order."""
    for spec in specs:
        yield from _expand(os.fsdecode(spec))
    if files_from is not None:
        for spec in _read_list(files_from, stdin):
            if isinstance(spec, InputError):
                yield spec
            else:
                yield from _expand(spec)


# --------------------------------------------------------------------------------------------
# Specs


def _expand(spec: str) -> Iterator[InputItem | InputError]:
    try:
        info = os.stat(spec)
    except FileNotFoundError:
        yield from _expand_missing(spec)
        return
    except OSError as error:
        yield InputError(spec, _os_message(error))
        return
    if stat.S_ISDIR(info.st_mode):
        yield from _walk_directory(spec)
    else:
        yield InputItem(spec)  # named explicitly: decoding decides whether it is an image


def _expand_missing(spec: str) -> Iterator[InputItem | InputError]:
    if os.path.lexists(spec):
        yield InputError(spec, "broken symbolic link")
    elif _GLOB_MAGIC.search(spec):
        yield from _expand_glob(spec)
    else:
        yield InputError(spec, "no such file or directory")


def _expand_glob(pattern: str) -> Iterator[InputItem | InputError]:
    # Sorting needs every match, so a glob (unlike a directory walk) is materialised.
    matches = {path for path in glob.iglob(pattern, recursive=True) if _is_image_file(path)}
    if not matches:
        yield InputError(pattern, "glob matched no files")
        return
    for path in sorted(matches, key=_path_sort_key):
        yield InputItem(path)


def _path_sort_key(path: str) -> list[bytes]:
    # Component-wise bytes order: the same order the directory walk produces.
    return os.fsencode(path).split(os.fsencode(os.sep))


def _read_list(files_from: str, stdin: TextIO | None) -> Iterator[str | InputError]:
    """Specs from a list file, one per line; blank lines and '#' comments skipped."""
    if files_from == "-":
        yield from _list_lines(_lines_of(stdin if stdin is not None else sys.stdin))
        return
    try:
        handle = open(files_from, "rb")  # noqa: SIM115 - closed below, after a lazy read
    except OSError as error:
        yield InputError(files_from, f"cannot read list file: {_os_message(error)}")
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


def _os_message(error: OSError) -> str:
    if isinstance(error, PermissionError):
        return "permission denied"
    return (error.strerror or str(error)).lower()


# --------------------------------------------------------------------------------------------
# File selection


def _is_image_file(path: str) -> bool:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    return _has_image_extension(path) or _sniff(path)


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _sniff(path: str) -> bool:
    """True when the file starts like a JPEG, PNG, GIF, BMP, TIFF or WEBP."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return (
        head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a"))
        or head.startswith((b"II*\x00", b"MM\x00*"))
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
        or (head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00")  # reserved fields
    )


# --------------------------------------------------------------------------------------------
# Directory walk


def _walk_directory(root: str) -> Iterator[InputItem | InputError]:
    found = False
    for result in _Walk(root):
        found = found or isinstance(result, InputItem)
        yield result
    if not found:
        yield InputError(root, "directory contains no images")


@dataclass
class _Frame:
    path: str
    key: tuple[int, int]
    entries: Iterator[os.DirEntry]
    external: bool  # reached through a symlink leaving the root


@dataclass
class _Walk:
    """Depth-first, name-sorted walk of `root` that follows symlinks without loops or repeats.

    Symlinks that resolve inside the root are skipped (the real path is walked anyway), so only
    what symlinks bring in from outside needs remembering, not every file seen.
    """

    root: str
    root_real: str = ""
    on_path: set[tuple[int, int]] = field(default_factory=set)
    external_dirs: set[tuple[int, int]] = field(default_factory=set)
    external_files: set[tuple[int, int]] = field(default_factory=set)

    def __iter__(self) -> Iterator[InputItem | InputError]:
        self.root_real = os.path.realpath(self.root)
        stack: list[_Frame] = []
        try:
            root_key = _key(os.stat(self.root))
        except OSError as error:
            yield InputError(self.root, _os_message(error))
            return
        yield from self._enter(stack, self.root, root_key, external=False)
        while stack:
            frame = stack[-1]
            entry = next(frame.entries, None)
            if entry is None:
                stack.pop()
                self.on_path.discard(frame.key)
            else:
                yield from self._visit(stack, entry, frame.external)

    def _enter(
        self, stack: list[_Frame], path: str, key: tuple[int, int], *, external: bool
    ) -> Iterator[InputError]:
        try:
            entries = _sorted_entries(path)
        except OSError as error:
            yield InputError(path, f"cannot read directory: {_os_message(error)}")
            return
        self.on_path.add(key)
        stack.append(_Frame(path, key, iter(entries), external))

    def _visit(
        self, stack: list[_Frame], entry: os.DirEntry, external: bool
    ) -> Iterator[InputItem | InputError]:
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError:
            return
        if is_dir:
            yield from self._visit_dir(stack, entry, is_link, external)
        elif is_file and self._wanted_file(entry, is_link, external):
            yield InputItem(entry.path)

    def _visit_dir(
        self, stack: list[_Frame], entry: os.DirEntry, is_link: bool, external: bool
    ) -> Iterator[InputError]:
        try:
            key = _key(entry.stat())
        except OSError:
            return
        if key in self.on_path:
            logger.warning("skipping symlink loop %s", display_path(entry.path))
            return
        if is_link and self._covered(entry.path):
            logger.debug("skipping %s: its target is walked anyway", display_path(entry.path))
            return
        external = external or is_link
        if external:
            if key in self.external_dirs:
                return
            self.external_dirs.add(key)
        yield from self._enter(stack, entry.path, key, external=external)

    def _wanted_file(self, entry: os.DirEntry, is_link: bool, external: bool) -> bool:
        if not (_has_image_extension(entry.name) or _sniff(entry.path)):
            return False
        if is_link and self._covered(entry.path):
            return False
        if is_link or external:
            try:
                key = _key(entry.stat())
            except OSError:
                return False
            if key in self.external_files:
                return False
            self.external_files.add(key)
        return True

    def _covered(self, path: str) -> bool:
        """True when `path` resolves to something the walk reaches by its real path."""
        relative = os.path.relpath(os.path.realpath(path), self.root_real)
        if relative == os.curdir:
            return True
        parts = relative.split(os.sep)
        return parts[0] != os.pardir and not any(part.startswith(".") for part in parts)


def _key(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _sorted_entries(path: str) -> list[os.DirEntry]:
    with os.scandir(path) as scan:
        entries = [entry for entry in scan if not entry.name.startswith(".")]
    entries.sort(key=lambda entry: os.fsencode(entry.name))
    return entries
