"""The local walk: files, folders (walked recursively, one directory listing at a time), globs and
symbolic links, leaving out the run's own outputs and counting the formats this install cannot
decode. Tar archives met on the way are read by archives.py.
"""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field

from .archives import expand_local_tar
from .formats import known_extension, read_head, sniff, sniff_image
from .items import GLOB_MAGIC, InputError, InputItem, Scope, display_path, os_message
from .sources import is_tar_name

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Local specs


def expand_local(spec: str, scope: Scope) -> Iterator[InputItem | InputError]:
    """A local spec: a file (taken as named), a folder (walked), a tar archive or a glob."""
    try:
        info = os.stat(spec)
    except FileNotFoundError:
        yield from _expand_missing(spec, scope)
        return
    except OSError as error:
        yield InputError(spec, os_message(error))
        return
    if stat.S_ISDIR(info.st_mode):
        yield from _walk_directory(spec, scope)
    elif is_tar_name(spec):
        yield from expand_local_tar(spec, scope)
    else:
        yield InputItem(spec)  # named explicitly: decoding decides whether it is an image


def _expand_missing(spec: str, scope: Scope) -> Iterator[InputItem | InputError]:
    if os.path.lexists(spec):
        yield InputError(spec, "broken symbolic link")
    elif GLOB_MAGIC.search(spec):
        yield from _expand_glob(spec, scope)
    else:
        yield InputError(spec, "no such file or directory")


def _expand_glob(pattern: str, scope: Scope) -> Iterator[InputItem | InputError]:
    # Sorting needs every match, so a glob (unlike a directory walk) is materialised.
    matches = {path for path in glob.iglob(pattern, recursive=True) if _is_image_file(path)}
    matches = {path for path in matches if not scope.skips_output_within(path)}
    skipped = scope.skipped()
    matches = {path for path in matches if not scope.skips_undecodable(path, path)}
    if not matches:
        if scope.skipped() == skipped:
            yield InputError(pattern, "glob matched no files")
        return
    for path in sorted(matches, key=_path_sort_key):
        if is_tar_name(path):
            yield from expand_local_tar(path, scope)
        else:
            yield InputItem(path)


def _path_sort_key(path: str) -> list[bytes]:
    # Component-wise bytes order: the same order the directory walk produces.
    return os.fsencode(path).split(os.fsencode(os.sep))


# --------------------------------------------------------------------------------------------
# File selection


def _is_image_file(path: str) -> bool:
    """An image file (by name or content) or a tar archive of them (by name)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    return known_extension(path) or is_tar_name(path) or _sniff(path)


def _sniff(path: str) -> bool:
    """True when the file starts like an image format we know, decodable here (sniff_image) or
    not (HEIF, AVIF, JPEG XL without their decoder: taken, then counted by skips_undecodable)."""
    head = read_head(path)
    return head is not None and (sniff_image(head) or sniff(head) is not None)


# --------------------------------------------------------------------------------------------
# Directory walk


def _walk_directory(root: str, scope: Scope) -> Iterator[InputItem | InputError]:
    found, skipped = False, scope.skipped()
    for result in _Walk(root, scope):
        found = found or isinstance(result, InputItem)
        yield result
    if not found:
        none = "no images" if scope.skipped() == skipped else "no images this install decodes"
        yield InputError(root, f"directory contains {none}")


@dataclass
class _Frame:
    path: str
    key: tuple[int, int]
    entries: Iterator[os.DirEntry]
    external: bool  # reached through a symlink leaving the root


@dataclass
class _Walk:
    """Depth-first, name-sorted walk of `root`; directory symlinks are followed only with
    `scope.follow_links`, then without loops or repeats.

    Symlinks that resolve inside the root are skipped (the real path is walked anyway), so only
    what symlinks bring in from outside needs remembering, not every file seen.
    """

    root: str
    scope: Scope
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
            yield InputError(self.root, os_message(error))
            return
        yield from self._enter(stack, self.root, root_key, external=False)
        while stack:
            frame = stack[-1]
            entry = next(frame.entries, None)
            if entry is None:
                stack.pop()
                self.on_path.discard(frame.key)
            else:
                yield from self._visit(stack, entry, frame)

    def _enter(
        self, stack: list[_Frame], path: str, key: tuple[int, int], *, external: bool
    ) -> Iterator[InputError]:
        try:
            entries = _sorted_entries(path)
        except OSError as error:
            yield InputError(path, f"cannot read directory: {os_message(error)}")
            return
        self.on_path.add(key)
        stack.append(_Frame(path, key, iter(entries), external))

    def _visit(
        self, stack: list[_Frame], entry: os.DirEntry, frame: _Frame
    ) -> Iterator[InputItem | InputError]:
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir()
            is_file = not is_dir and entry.is_file()
        except OSError:
            return
        if is_dir and is_link and not self.scope.follow_links:
            self.scope.notes.links_not_followed += 1
            return
        if not (is_dir or (is_file and self._wanted_file(entry, is_link, frame.external))):
            return
        if self.scope.skips_entry(entry):
            return
        if is_dir:
            yield from self._visit_dir(stack, entry, is_link, frame.external)
        elif is_tar_name(entry.name):
            yield from expand_local_tar(entry.path, self.scope)
        elif not self.scope.skips_undecodable(entry.name, entry.path):
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
        wanted = known_extension(entry.name) or is_tar_name(entry.name)
        if not (wanted or _sniff(entry.path)):
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
