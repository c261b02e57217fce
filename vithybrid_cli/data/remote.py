"""Remote inputs: http(s) URLs (an image downloaded when opened) and object stores (fsspec
buckets: an object, a folder walked one listing at a time, a glob); tar archives among them are
read by archives.py.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from .archives import expand_tar
from .formats import known_extension
from .items import GLOB_MAGIC, InputError, InputItem, Scope
from .sources import (
    RemoteFileOpener,
    SourceError,
    UrlOpener,
    describe_os_error,
    is_tar_name,
    open_url_stream,
    remote_filesystem,
)


def expand_url(url: str, scope: Scope) -> Iterator[InputItem | InputError]:
    """An http(s) URL: one image, downloaded when opened, or a tar archive's members, streamed."""
    if is_tar_name(url.split("?", 1)[0].split("#", 1)[0]):
        opener = functools.partial(open_url_stream, url, scope.options)
        yield from expand_tar(url, opener, scope)
    else:
        yield InputItem(url, UrlOpener(url, scope.options))


def expand_remote(spec: str, scope: Scope) -> Iterator[InputItem | InputError]:
    """A `scheme://` object-store spec: an object, a folder (walked), a glob or a tar archive."""
    options = scope.options
    try:
        fs, root = remote_filesystem(spec)
    except SourceError as error:
        yield InputError(spec, error.message)
        return
    if GLOB_MAGIC.search(root):
        yield from _expand_remote_glob(fs, spec, root, scope)
        return
    if is_tar_name(root):
        yield from expand_tar(spec, RemoteFileOpener(fs, root, options, capped=False), scope)
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


def _remote_item(fs: Any, url: str, info: dict, scope: Scope) -> Iterator[Any]:
    path, options = info["name"], scope.options
    if is_tar_name(path):
        yield from expand_tar(url, RemoteFileOpener(fs, path, options, capped=False), scope)
    elif not scope.skips_undecodable(path):
        yield InputItem(url, RemoteFileOpener(fs, path, options, size=info.get("size")))


def _remote_wanted(info: dict) -> bool:
    # Listing gives no bytes to sniff (that would be a request per object): names decide.
    name = info["name"].rstrip("/")
    return info.get("type") == "file" and (known_extension(name) or is_tar_name(name))


def _walk_remote(fs: Any, spec: str, root: str, scope: Scope) -> Iterator[InputItem | InputError]:
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
    fs: Any, spec: str, pattern: str, scope: Scope
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
    cut = spec.rfind("/", 0, GLOB_MAGIC.search(spec).start())
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
