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

This module is the dispatch: which reader a spec goes to. The readers live by source: walk.py
(local files, folders, globs), archives.py (tar archives), remote.py (http(s) URLs and object
stores), lists.py (stdin and list files); items.py holds the types they yield.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from .formats import decodable_extensions
from .items import InputError, InputItem, Scope, WalkNotes
from .lists import STDIN, read_list, stdin_item
from .remote import expand_remote, expand_url
from .sources import RemoteOptions, is_http_url, is_remote
from .walk import expand_local


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
    scope = Scope(
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
    """The stream of one iter_inputs call: each spec handed to the reader of its source."""

    scope: Scope
    stdin: TextIO | None
    list_on_stdin: bool

    def stream(self, specs: list[str], files_from: str | None) -> Iterator[InputItem | InputError]:
        for spec in specs:
            yield from self.expand(spec)
        if files_from is not None:
            for spec in read_list(files_from, self.stdin):
                if isinstance(spec, InputError):
                    yield spec
                else:
                    yield from self.expand(spec)

    def expand(self, spec: str) -> Iterator[InputItem | InputError]:
        if spec == STDIN:
            yield stdin_item(self.stdin, self.scope.options, list_on_stdin=self.list_on_stdin)
        elif is_http_url(spec):
            yield from expand_url(spec, self.scope)
        elif is_remote(spec):
            yield from expand_remote(spec, self.scope)
        else:
            yield from expand_local(spec, self.scope)
