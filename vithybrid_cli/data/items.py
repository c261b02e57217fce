"""The input types every reader of inputs yields and shares: InputItem (an image and how to open
its bytes), InputError (a name that yields no image), WalkNotes (what the walks left out, for the
CLI's summary), display_path(), and the rules one stream's walks follow (Scope).

Local paths stay `str` as the OS gave them (undecodable bytes as surrogates, see os.fsdecode), so
they still open; display_path() makes them printable.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from .formats import ImageFormat, extension, for_extension, read_head, sniff, sniff_image
from .sources import RemoteOptions

GLOB_MAGIC = re.compile(r"[*?[]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class InputItem:
    """An image to process: `path` names it in records, `open()` gives its bytes.

    Without an opener the path is a local file. Otherwise the opener is a callable returning a
    binary file object: an HTTP download, a tar member's bytes held in memory, an fsspec file,
    stdin's bytes. Opening may raise SourceError (one line); preprocess.load_image(item) opens,
    decodes and turns every failure into ImageError.
    """

    path: str
    opener: Callable[[], BinaryIO] | None = field(default=None, compare=False, repr=False)

    @property
    def local_path(self) -> str | None:
        """The local file's path, or None when the bytes come from elsewhere."""
        return self.path if self.opener is None else None

    def open(self) -> BinaryIO:
        if self.opener is None:
            return open(self.path, "rb")  # noqa: SIM115 - the caller closes it
        return self.opener()


@dataclass(frozen=True)
class InputError:
    """Something the user named that yields no image; reported as an error record."""

    path: str
    message: str


@dataclass
class WalkNotes:
    """What walking the inputs left out that the user should hear of (the CLI's summary)."""

    # extension -> walked files in a known image format that this install cannot decode
    undecodable: dict[str, int] = field(default_factory=dict)
    own_outputs: list[str] = field(default_factory=list)  # the run's outputs met, each once
    links_not_followed: int = 0  # directory symlinks (without follow_links)

    def undecodable_lines(self) -> list[str]:
        """`skipped 120 .heic files: pip install "vithybrid[heif]"`, a line per extension."""
        lines = []
        for ext, count in sorted(self.undecodable.items()):
            fmt = for_extension(ext)
            hint = f": {fmt.hint}" if fmt is not None else ""
            lines.append(f"skipped {count} {ext} file{'s' if count != 1 else ''}{hint}")
        return lines


def display_path(path: str) -> str:
    """`path` made printable and JSON-safe: undecodable bytes and control chars as \\xNN."""
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:  # lone surrogates that did not come from the file system
        raw = path.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "backslashreplace")
    return _CONTROL_CHARS.sub(lambda match: f"\\x{ord(match.group()):02x}", text)


@dataclass
class Scope:
    """The rules every walk of one stream follows, and the notes it keeps."""

    options: RemoteOptions
    notes: WalkNotes
    excluded: frozenset[str]  # real paths
    excluded_names: frozenset[str]  # their last components: most entries need no real path
    follow_links: bool
    take_undecodable: bool
    decodable: frozenset[str]  # extensions

    def skips_undecodable(self, name: str, local: str | None = None) -> bool:
        """Whether walked file `name` is left out as a format this install cannot decode
        (counted); False for everything else. For a local file (`local`, its path) whose name
        does not say a decodable format, its first bytes decide what it is: a JPEG named .heic
        is taken, an HEIC without an extension is counted as HEIC. Names alone decide for
        archive members and bucket listings (reading each would cost a request)."""
        if self.take_undecodable:
            return False
        ext = extension(name)
        if ext in self.decodable:
            return False  # taken: a HEIC named .jpg fails with the hint when decoded
        fmt = for_extension(ext)
        head = read_head(local) if local is not None else None
        if head is not None:
            if sniff_image(head):
                return False  # an image this install decodes, whatever its name says
            fmt = sniff(head) or fmt
        if fmt is None:
            return False
        self.count_undecodable(fmt, ext)
        return True

    def count_undecodable(self, fmt: ImageFormat, ext: str = "") -> None:
        """One more walked file left out in format `fmt`, counted under its name's extension
        when that is one of the format's, else under the format's usual one (.heic)."""
        key = ext if ext in fmt.extensions else fmt.extensions[0]
        self.notes.undecodable[key] = self.notes.undecodable.get(key, 0) + 1

    def skips_entry(self, entry: os.DirEntry) -> bool:
        """Whether walked `entry` is one of the run's own outputs (noted once)."""
        if entry.name not in self.excluded_names:
            return False
        return self.skips_output(os.path.realpath(entry.path), entry.path)

    def skips_output(self, real: str, path: str) -> bool:
        """Whether `path` (real path `real`) is one of the run's own outputs (noted once)."""
        if real not in self.excluded:
            return False
        shown = display_path(path)
        if shown not in self.notes.own_outputs:
            self.notes.own_outputs.append(shown)
        return True

    def skips_output_within(self, path: str) -> bool:
        """skips_output for `path` or any folder above it (a glob's match)."""
        if not self.excluded:
            return False
        real = os.path.realpath(path)
        while True:
            if real in self.excluded:
                return self.skips_output(real, path)  # noted as the user spells the folder
            parent = os.path.dirname(real)
            if parent == real:
                return False
            real, path = parent, os.path.dirname(path) or parent

    def skipped(self) -> int:
        """How many walked files were left out as undecodable so far (all walks of the stream)."""
        return sum(self.notes.undecodable.values())


def os_message(error: OSError) -> str:
    """A local file's OSError as a short lower-case message (`permission denied`)."""
    if isinstance(error, PermissionError):
        return "permission denied"
    return (error.strerror or str(error)).lower()
