"""Turn what the user named into a stream of images: files, directories, globs, list files,
http(s) URLs, `-` (stdin), tar archives (WebDataset shards) and fsspec object stores.

Everything is lazy: directories are walked one directory listing at a time; a local uncompressed
tar archive is indexed by its headers, each member read when opened (so members skipped by a
resume or left to another torchrun rank cost no reading), and other archives are read as a
stream, one member at a time. The first image of a huge tree arrives at once and memory stays
bounded. Each InputItem knows how to open its bytes (`item.open()`); its `path` is
what the user named (a URL as given, `shard-000.tar/member.jpg`, `-`), the key for records and
resume. Local paths stay `str` as the OS gave them (undecodable bytes as surrogates, see
os.fsdecode), so they still open; display_path() makes them printable.
"""

from __future__ import annotations

import functools
import glob
import io
import itertools
import logging
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, TextIO

from .formats import (
    decodable_extensions,
    extension,
    for_extension,
    known_extension,
    sniff_decodable,
)
from .sources import (
    RemoteFileOpener,
    RemoteOptions,
    SourceError,
    TarMemberOpener,
    UrlOpener,
    describe_os_error,
    index_tar,
    is_http_url,
    is_remote,
    is_tar_name,
    iter_tar,
    open_url_stream,
    read_capped,
    remote_filesystem,
)

logger = logging.getLogger(__name__)

_GLOB_MAGIC = re.compile(r"[*?[]")
_SNIFF_BYTES = 12
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


STDIN = "-"


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


def iter_inputs(
    specs: Iterable[str],
    *,
    files_from: str | None = None,
    stdin: TextIO | None = None,
    options: RemoteOptions | None = None,
    follow_links: bool = False,
    exclude: Iterable[str] = (),
    notes: WalkNotes | None = None,
    take_undecodable: bool = False,
) -> Iterator[InputItem | InputError]:
    """Images named by `specs`, then by the lines of `files_from` ("-": `stdin`), in order.

    A spec is a local file, directory (walked recursively), glob, tar archive, http(s) URL,
    `scheme://` object-store URL (fsspec) or `-` (one image's bytes from `stdin`). `options`
    bound downloads (size cap, timeout, retries). ValueError at once when `-` and
    `files_from="-"` would both need stdin.

    Walks (directories, globs, archives, buckets) take the files whose extension or content is
    an image format this install decodes (formats.py). They leave out, and count in `notes`:
    files in a known format it cannot decode (`take_undecodable`: taken instead, so decoding
    fails with the hint), the paths in `exclude` (the run's own outputs) and what is beneath
    them, and directory symlinks unless `follow_links`. What is named directly is taken.
    """
    specs = [os.fsdecode(spec) for spec in specs]
    if files_from == STDIN and STDIN in specs:
        raise ValueError("'-' reads an image from stdin, so --files-from cannot also be '-'")
    excluded = frozenset(os.path.realpath(os.fsdecode(path)) for path in exclude)
    scope = _Scope(
        options or RemoteOptions(),
        notes if notes is not None else WalkNotes(),
        excluded,
        frozenset(os.path.basename(path) for path in excluded),
        follow_links,
        take_undecodable,
        decodable_extensions(),
    )
    expander = _Expander(scope, stdin, list_on_stdin=files_from == STDIN)
    return expander.stream(specs, files_from)


@dataclass
class _Scope:
    """The rules every walk of one stream follows, and the notes it keeps."""

    options: RemoteOptions
    notes: WalkNotes
    excluded: frozenset[str]  # real paths
    excluded_names: frozenset[str]  # their last components: most entries need no real path
    follow_links: bool
    take_undecodable: bool
    decodable: frozenset[str]  # extensions

    def skips_undecodable(self, name: str) -> bool:
        """Whether walked file `name` is left out as a format this install cannot decode
        (counted); False for everything else."""
        if self.take_undecodable:
            return False
        ext = extension(name)
        if ext in self.decodable or for_extension(ext) is None:
            return False
        self.notes.undecodable[ext] = self.notes.undecodable.get(ext, 0) + 1
        return True

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
        return sum(self.notes.undecodable.values())


def cheap_to_count(specs: Iterable[str], files_from: str | None = None) -> bool:
    """Whether counting the inputs first (for a progress bar's total) costs only local listing.

    Not when stdin or a network is involved, or an archive must be read to know its members:
    `-`, `--files-from -`, URLs, object stores, compressed tar archives (and globs that may
    match them). A local `.tar` is cheap: its headers list it. (Compressed archives met in a
    directory walk are still read when counting; a caller can cap the count's time instead.)
    """
    if files_from == STDIN:
        return False
    return not any(
        spec == STDIN or is_remote(spec) or _compressed_archive(spec.lower())
        for spec in (os.fsdecode(spec) for spec in specs)
    )


def _compressed_archive(spec: str) -> bool:
    """A (lower-case) spec naming, or a glob perhaps matching, a compressed tar archive."""
    return ".tar" in spec and not spec.endswith(".tar")


@dataclass
class _Expander:
    scope: _Scope
    stdin: TextIO | None
    list_on_stdin: bool

    def stream(self, specs: list[str], files_from: str | None) -> Iterator[InputItem | InputError]:
        for spec in specs:
            yield from self.expand(spec)
        if files_from is not None:
            for spec in _read_list(files_from, self.stdin):
                if isinstance(spec, InputError):
                    yield spec
                else:
                    yield from self.expand(spec)

    def expand(self, spec: str) -> Iterator[InputItem | InputError]:
        if spec == STDIN:
            yield self._stdin_item()
        elif is_http_url(spec):
            yield from self._expand_url(spec)
        elif is_remote(spec):
            yield from _expand_remote(spec, self.scope)
        else:
            yield from _expand_local(spec, self.scope)

    def _stdin_item(self) -> InputItem | InputError:
        if self.list_on_stdin:
            return InputError(STDIN, "stdin holds the --files-from list, not an image")
        stream = self.stdin if self.stdin is not None else sys.stdin
        if stream is None or _isatty(stream):
            return InputError(STDIN, "stdin is a terminal: pipe an image into it")
        data = _read_stdin(stream, self.scope.options)
        if isinstance(data, SourceError):
            return InputError(STDIN, data.message)
        return InputItem(STDIN, functools.partial(io.BytesIO, data))

    def _expand_url(self, url: str) -> Iterator[InputItem | InputError]:
        if is_tar_name(url.split("?", 1)[0].split("#", 1)[0]):
            opener = functools.partial(open_url_stream, url, self.scope.options)
            yield from _expand_tar(url, opener, self.scope)
        else:
            yield InputItem(url, UrlOpener(url, self.scope.options))


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


# --------------------------------------------------------------------------------------------
# Local specs


def _expand_local(spec: str, scope: _Scope) -> Iterator[InputItem | InputError]:
    try:
        info = os.stat(spec)
    except FileNotFoundError:
        yield from _expand_missing(spec, scope)
        return
    except OSError as error:
        yield InputError(spec, _os_message(error))
        return
    if stat.S_ISDIR(info.st_mode):
        yield from _walk_directory(spec, scope)
    elif is_tar_name(spec):
        yield from _expand_local_tar(spec, scope)
    else:
        yield InputItem(spec)  # named explicitly: decoding decides whether it is an image


def _expand_missing(spec: str, scope: _Scope) -> Iterator[InputItem | InputError]:
    if os.path.lexists(spec):
        yield InputError(spec, "broken symbolic link")
    elif _GLOB_MAGIC.search(spec):
        yield from _expand_glob(spec, scope)
    else:
        yield InputError(spec, "no such file or directory")


def _expand_glob(pattern: str, scope: _Scope) -> Iterator[InputItem | InputError]:
    # Sorting needs every match, so a glob (unlike a directory walk) is materialised.
    matches = {path for path in glob.iglob(pattern, recursive=True) if _is_image_file(path)}
    matches = {path for path in matches if not scope.skips_output_within(path)}
    skipped = scope.skipped()
    matches = {path for path in matches if not scope.skips_undecodable(path)}
    if not matches:
        if scope.skipped() == skipped:
            yield InputError(pattern, "glob matched no files")
        return
    for path in sorted(matches, key=_path_sort_key):
        if is_tar_name(path):
            yield from _expand_local_tar(path, scope)
        else:
            yield InputItem(path)


def _expand_local_tar(path: str, scope: _Scope) -> Iterator[InputItem | InputError]:
    """A local archive's image members; an uncompressed one is indexed by its headers alone."""
    if path.lower().endswith(".tar"):
        indexed = _expand_indexed_tar(path, scope)
        if indexed is not None:
            yield from indexed
            return
    yield from _expand_tar(path, lambda: open(path, "rb"), scope)  # noqa: SIM115 - closed there


def _expand_indexed_tar(path: str, scope: _Scope) -> Iterator[Any] | None:
    """An uncompressed archive's members as items that read their bytes when opened, or None
    when `path` is no such archive (a compressed one named .tar: read as a stream instead)."""
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the generator below
    except OSError as error:
        return iter([InputError(path, _os_message(error))])
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


# --------------------------------------------------------------------------------------------
# Tar archives


def _expand_tar(
    archive: str, open_stream: Callable[[], BinaryIO], scope: _Scope
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
        yield InputError(archive, _os_message(error))
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
    return known_extension(name) or _sniff_head(head)


# --------------------------------------------------------------------------------------------
# Object stores (fsspec)


def _expand_remote(spec: str, scope: _Scope) -> Iterator[InputItem | InputError]:
    options = scope.options
    try:
        fs, root = remote_filesystem(spec)
    except SourceError as error:
        yield InputError(spec, error.message)
        return
    if _GLOB_MAGIC.search(root):
        yield from _expand_remote_glob(fs, spec, root, scope)
        return
    if is_tar_name(root):
        yield from _expand_tar(spec, RemoteFileOpener(fs, root, options, capped=False), scope)
        return
    if known_extension(root) and not spec.endswith("/"):
        yield InputItem(spec, RemoteFileOpener(fs, root, options))  # no round trip to check
        return
    try:
        info = fs.info(root)
    except Exception as error:  # each backend raises its own types
        yield InputError(spec, describe_os_error(error))
        return
    if info.get("type") == "directory":
        yield from _walk_remote(fs, spec, root, scope)
    else:
        yield InputItem(spec, RemoteFileOpener(fs, root, options, size=info.get("size")))


def _remote_item(fs: Any, url: str, info: dict, scope: _Scope) -> Iterator[Any]:
    path, options = info["name"], scope.options
    if is_tar_name(path):
        yield from _expand_tar(url, RemoteFileOpener(fs, path, options, capped=False), scope)
    elif not scope.skips_undecodable(path):
        yield InputItem(url, RemoteFileOpener(fs, path, options, size=info.get("size")))


def _remote_wanted(info: dict) -> bool:
    # Listing gives no bytes to sniff (that would be a request per object): names decide.
    name = info["name"].rstrip("/")
    return info.get("type") == "file" and (known_extension(name) or is_tar_name(name))


def _walk_remote(fs: Any, spec: str, root: str, scope: _Scope) -> Iterator[InputItem | InputError]:
    """Depth-first and name-sorted like the local walk, one listing at a time; dot names skipped."""
    found = False
    base, root = spec.rstrip("/"), root.rstrip("/")
    stack: list[Iterator[dict]] = []
    directory: str | None = root
    while True:
        if directory is not None:
            try:
                stack.append(iter(_remote_listing(fs, directory)))
            except Exception as error:  # each backend raises its own types
                url = _remote_url(fs, base, root, directory)
                yield InputError(url, f"cannot list: {describe_os_error(error)}")
            directory = None
        if not stack:
            break
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif entry.get("type") == "directory":
            directory = entry["name"].rstrip("/")
        elif _remote_wanted(entry):
            found = True
            url = _remote_url(fs, base, root, entry["name"].rstrip("/"))
            yield from _remote_item(fs, url, entry, scope)
    if not found:
        yield InputError(spec, "directory contains no images")


def _remote_listing(fs: Any, directory: str) -> list[dict]:
    entries = [
        entry
        for entry in fs.ls(directory, detail=True)
        if entry["name"].rstrip("/") != directory and not _basename(entry["name"]).startswith(".")
    ]
    entries.sort(key=lambda entry: _basename(entry["name"]).encode("utf-8", "surrogatepass"))
    return entries


def _expand_remote_glob(
    fs: Any, spec: str, pattern: str, scope: _Scope
) -> Iterator[InputItem | InputError]:
    try:
        matches = fs.glob(pattern, detail=True)
    except Exception as error:
        yield InputError(spec, describe_os_error(error))
        return
    # As for local globs, wildcards do not match hidden names unless the pattern spells a dot.
    hidden_ok = "/." in pattern
    infos = [
        info
        for info in matches.values()
        if _remote_wanted(info) and (hidden_ok or "/." not in info["name"])
    ]
    if not infos:
        yield InputError(spec, "glob matched no files")
        return
    # Record paths keep the user's spelling of the part before the first wildcard.
    cut = spec.rfind("/", 0, _GLOB_MAGIC.search(spec).start())
    base = spec[:cut]
    try:
        root = remote_filesystem(base + "/")[1].rstrip("/") if "://" in base else None
    except SourceError:
        root = None
    for info in sorted(infos, key=lambda i: i["name"].encode("utf-8", "surrogatepass")):
        url = _remote_url(fs, base, root, info["name"].rstrip("/"))
        yield from _remote_item(fs, url, info, scope)


def _remote_url(fs: Any, base: str, root: str | None, name: str) -> str:
    """`name` (a path inside fs) as a URL spelled like the user's `base` (which names `root`)."""
    if root is not None:
        if name == root:
            return base
        if name.startswith(root + "/"):
            return f"{base}/{name[len(root) + 1 :]}"
    return fs.unstrip_protocol(name)


def _basename(name: str) -> str:
    return name.rstrip("/").rsplit("/", 1)[-1]


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
    """An image file (by name or content) or a tar archive of them (by name)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    return known_extension(path) or is_tar_name(path) or _sniff(path)


def _sniff(path: str) -> bool:
    """True when the file starts like an image this install decodes (see _sniff_head)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_SNIFF_BYTES)
    except OSError:
        return False
    return _sniff_head(head)


def _sniff_head(head: bytes) -> bool:
    """True when `head` (a file's first 12 bytes) starts a JPEG, PNG, GIF, BMP, TIFF or WEBP,
    or a HEIF, AVIF or JPEG XL file that this install decodes."""
    return (
        head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a"))
        or head.startswith((b"II*\x00", b"MM\x00*"))
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
        or (head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00")  # reserved fields
        or sniff_decodable(head)
    )


# --------------------------------------------------------------------------------------------
# Directory walk


def _walk_directory(root: str, scope: _Scope) -> Iterator[InputItem | InputError]:
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
    scope: _Scope
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
                yield from self._visit(stack, entry, frame)

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
            yield from _expand_local_tar(entry.path, self.scope)
        elif not self.scope.skips_undecodable(entry.name):
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
