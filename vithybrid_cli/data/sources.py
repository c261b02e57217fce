"""Where an input's bytes come from: HTTP(S) URLs, stdin, tar archives and fsspec object stores.

inputs.py decides *which* inputs a spec names; this module knows how to reach their bytes. Every
failure is a SourceError whose str() is one user-facing line (`HTTP 404 Not Found`, `timed out`,
`larger than 64 MB`), so a bad URL costs one error record and the batch goes on.

Downloads run where the opener is called: in the runner's decode threads, so they overlap with the
model like local decodes do, and the number of decode threads bounds how many run at once.
"""

from __future__ import annotations

import io
import logging
import os
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

from ..extras import MissingExtra, missing, require

if TYPE_CHECKING:
    import urllib.request

# urllib.request (with http.client and ssl) and tarfile are imported where used: a run over
# local files never pays for them.

logger = logging.getLogger(__name__)

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK = 1 << 20


class SourceError(Exception):
    """An input whose bytes cannot be had; str() is one user-facing line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


@dataclass(frozen=True)
class RemoteOptions:
    """How remote inputs are fetched (the CLI's --max-download-mb sets max_download_mb).

    Fields left out come from the environment (VITHYBRID_MAX_DOWNLOAD_MB, VITHYBRID_HTTP_TIMEOUT,
    VITHYBRID_HTTP_RETRIES, VITHYBRID_HTTP_BACKOFF) or else the defaults below.
    """

    # per image (stdin, URL, tar member, object); default 64
    max_download_mb: float = field(
        default_factory=lambda: _env_number("VITHYBRID_MAX_DOWNLOAD_MB", 64.0)
    )
    # seconds, for the connection and for each read; default 30
    timeout: float = field(default_factory=lambda: _env_number("VITHYBRID_HTTP_TIMEOUT", 30.0))
    # extra attempts on 5xx, 429, connection errors and timeouts; default 3
    retries: int = field(default_factory=lambda: int(_env_number("VITHYBRID_HTTP_RETRIES", 3)))
    # seconds before the first retry, doubled each time; default 0.5
    backoff: float = field(default_factory=lambda: _env_number("VITHYBRID_HTTP_BACKOFF", 0.5))

    def __post_init__(self) -> None:
        if self.max_download_mb <= 0:
            raise ValueError(f"max_download_mb must be positive, not {self.max_download_mb}")

    @property
    def max_bytes(self) -> int:
        return int(self.max_download_mb * (1 << 20))

    def too_large(self) -> SourceError:
        return SourceError(f"larger than {self.max_download_mb:g} MB")


# ---------------------------------------------------------------------------- names


def is_http_url(spec: str) -> bool:
    return spec[:8].lower().startswith(("http://", "https://"))


def is_remote(spec: str) -> bool:
    """True for `scheme://...` (http, s3, gs, az, hf, memory, ...); local paths are not."""
    return bool(_URL_SCHEME.match(spec))


def is_tar_name(name: str) -> bool:
    return name.lower().endswith(TAR_SUFFIXES)


def read_capped(stream: BinaryIO, options: RemoteOptions) -> bytes:
    """All of `stream`, or SourceError once it passes the size cap (never trusts a header)."""
    limit = options.max_bytes
    chunks, size = [], 0
    while True:
        chunk = stream.read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise options.too_large()


# ---------------------------------------------------------------------------- HTTP


def _request(url: str) -> urllib.request.Request:
    import urllib.request

    from .._version import __version__

    # No Accept restriction and the Content-Type of the answer is ignored: decoding decides.
    return urllib.request.Request(url, headers={"User-Agent": f"vithybrid/{__version__}"})


def _open_http(url: str, options: RemoteOptions) -> Any:
    """The response to GET `url` (redirects followed), retried on transient failures."""
    import urllib.error
    import urllib.request
    from http.client import HTTPException

    attempt = 0
    while True:
        try:
            return urllib.request.urlopen(_request(url), timeout=options.timeout)
        except urllib.error.HTTPError as error:
            error.close()
            failure = SourceError(f"HTTP {error.code} {error.reason}".strip())
            transient = error.code in _RETRY_STATUS
        except (urllib.error.URLError, OSError, HTTPException) as error:
            failure, transient = _network_error(error), True
        if not transient or attempt >= options.retries:
            raise failure
        delay = options.backoff * 2**attempt
        logger.debug("%s: %s; retrying in %.2f s", url, failure, delay)
        time.sleep(delay)
        attempt += 1


def _network_error(error: BaseException) -> SourceError:
    reason = getattr(error, "reason", error)  # URLError wraps the socket error
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return SourceError("timed out")
    if isinstance(reason, socket.gaierror):
        return SourceError("unknown host")
    if isinstance(reason, ConnectionRefusedError):
        return SourceError("connection refused")
    text = " ".join(str(getattr(reason, "strerror", None) or reason).split())
    return SourceError(f"download failed: {text}" if text else "download failed")


def fetch_url(url: str, options: RemoteOptions | None = None) -> bytes:
    """The body of `url`, at most options.max_bytes; SourceError (one line) on any failure.

    A body cut short is retried like a failed connection; an oversized one is not.
    """
    from http.client import HTTPException

    options = options or RemoteOptions()
    attempt = 0
    while True:
        response = _open_http(url, options)
        try:
            with response:
                length = response.headers.get("Content-Length")
                if length and length.isdigit() and int(length) > options.max_bytes:
                    raise options.too_large()
                return read_capped(response, options)
        except SourceError:
            raise
        except (OSError, HTTPException) as error:  # reset or timed out mid-body
            failure = _network_error(error)
            if attempt >= options.retries:
                raise failure from error
        time.sleep(options.backoff * 2**attempt)
        attempt += 1


class UrlOpener:
    """Opens a URL's bytes; downloads once, so opening twice (e.g. for an overlay) is free.

    The bytes live as long as the InputItem holding this opener: the runner drops an item once
    it is decoded, so memory stays bounded by the decode look-ahead.
    """

    def __init__(self, url: str, options: RemoteOptions | None = None) -> None:
        self.url, self.options = url, options or RemoteOptions()
        self._data: bytes | None = None

    def __call__(self) -> BinaryIO:
        if self._data is None:
            self._data = fetch_url(self.url, self.options)
        return io.BytesIO(self._data)


def open_url_stream(url: str, options: RemoteOptions | None = None) -> BinaryIO:
    """The response body as a stream (for tar archives, read once from start to end)."""
    return _open_http(url, options or RemoteOptions())


# ---------------------------------------------------------------------------- tar archives


def iter_tar(
    stream: BinaryIO, options: RemoteOptions, wanted: Callable[[str, bytes], bool]
) -> Iterator[tuple[str, bytes | SourceError]]:
    """(member name, bytes or SourceError) for each wanted regular member, in archive order.

    Reads `stream` once, sequentially (tarfile's streaming mode: no seeks, nothing extracted),
    so memory holds one member at a time. `wanted(name, head)` sees the name and the first bytes.
    A broken archive raises SourceError after the members read so far.
    """
    import tarfile

    try:
        archive = tarfile.open(fileobj=stream, mode="r|*")  # noqa: SIM115 - `with` below
    except (tarfile.TarError, OSError, EOFError) as error:
        raise SourceError(f"not a readable tar archive ({_tar_text(error)})") from error
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                if member.size > options.max_bytes:
                    if wanted(name, b""):  # judged by its name alone: its data is not read
                        yield name, options.too_large()
                    continue
                fileobj = archive.extractfile(member)
                assert fileobj is not None  # regular members always have data
                head = fileobj.read(12)
                if not wanted(name, head):
                    continue  # the rest of its data is skipped when the next member is read
                data = head + fileobj.read()
                if len(data) != member.size:
                    raise tarfile.ReadError("unexpected end of data")
                yield name, data
        except (tarfile.TarError, OSError, EOFError, ValueError) as error:
            raise SourceError(f"corrupt tar archive ({_tar_text(error)})") from error


def index_tar(
    file: BinaryIO, options: RemoteOptions, wanted: Callable[[str, bytes], bool]
) -> Iterator[tuple[str, tuple[int, int] | bytes | SourceError]]:
    """(member name, (data offset, size) or SourceError) for each wanted regular member of the
    uncompressed archive in seekable `file`, in archive order (a GNU sparse member's bytes
    instead of its place).

    Only the headers are read; the data is seeked over (a member without an image name has its
    first bytes read, to sniff). So members that are never opened (another rank's share under
    torchrun, inputs done before a --resume) cost nothing to pass. Raises SourceError when
    `file` is not an uncompressed tar archive (before anything is yielded), or after the
    members read so far when it is cut short or broken.
    """
    import tarfile

    end_of_file = os.fstat(file.fileno()).st_size
    try:
        archive = tarfile.open(fileobj=file, mode="r:")  # noqa: SIM115 - `with` below
    except (tarfile.TarError, OSError, EOFError) as error:
        raise SourceError(f"not a readable tar archive ({_tar_text(error)})") from error
    with archive:
        try:
            for member in archive:
                if not member.isfile():
                    continue
                name = member.name.removeprefix("./")
                # (a sparse member's size is the file's, more than the bytes stored)
                if member.offset_data + member.size > end_of_file and not member.issparse():
                    raise tarfile.ReadError("unexpected end of data")
                head = b""
                if not wanted(name, head) and member.size:
                    file.seek(member.offset_data)
                    head = file.read(12)
                    if not wanted(name, head):
                        continue
                if member.size > options.max_bytes:
                    yield name, options.too_large()
                elif member.issparse():  # its stored bytes are not the file: tarfile reads it
                    yield name, archive.extractfile(member).read()  # type: ignore[union-attr]
                else:
                    yield name, (member.offset_data, member.size)
        except (tarfile.TarError, OSError, EOFError, ValueError) as error:
            raise SourceError(f"corrupt tar archive ({_tar_text(error)})") from error


class TarMemberOpener:
    """Opens one member of an uncompressed tar file by its data's place (see index_tar)."""

    def __init__(self, archive: str, offset: int, size: int) -> None:
        self.archive, self.offset, self.size = archive, offset, size

    def __call__(self) -> BinaryIO:
        with open(self.archive, "rb") as file:
            file.seek(self.offset)
            data = file.read(self.size)
        if len(data) != self.size:
            raise SourceError("corrupt tar archive (unexpected end of data)")
        return io.BytesIO(data)


def _tar_text(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:1].lower() + text[1:]


# ---------------------------------------------------------------------------- fsspec


def remote_filesystem(spec: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for `scheme://...`; SourceError with an install hint
    when fsspec or the scheme's package is missing."""
    try:
        fsspec = require("fsspec", "cloud")
    except MissingExtra as error:
        raise SourceError(str(error)) from error
    try:
        return fsspec.core.url_to_fs(spec)
    except ImportError as error:  # fsspec knows the scheme, its package is not installed
        raise SourceError(str(missing("cloud", _missing_package(spec, error)))) from error
    except ValueError as error:
        raise SourceError(" ".join(str(error).split())) from error


def require_protocol(spec: str) -> None:
    """MissingExtra naming the package, at once, when object-store URL `spec` needs fsspec or a
    protocol package (s3fs, gcsfs, adlfs...) that is not installed. Imports the filesystem's
    class only: nothing is instantiated, so no credentials are looked up and nothing connects.
    An unknown scheme passes: its input gets the one-line error when it is expanded."""
    fsspec = require("fsspec", "cloud")
    try:
        fsspec.get_filesystem_class(spec.split("://", 1)[0].lower())
    except ImportError as error:
        raise missing("cloud", _missing_package(spec, error)) from error
    except ValueError:
        pass


def _missing_package(spec: str, error: ImportError) -> str:
    from fsspec.registry import known_implementations

    scheme = spec.split("://", 1)[0].lower()
    known = known_implementations.get(scheme, {})
    module = str(known.get("class", "")).split(".", 1)[0]
    return module or getattr(error, "name", None) or scheme


def describe_os_error(error: BaseException) -> str:
    """One line for an error a filesystem (local or fsspec) raised."""
    if isinstance(error, FileNotFoundError):
        return "no such file or directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if getattr(error, "strerror", None):
        return " ".join(str(error.strerror).split()).lower()  # "No such device" -> as ls says
    return " ".join(str(error).split()) or type(error).__name__


class RemoteFileOpener:
    """Opens one object of an fsspec filesystem (a seekable, buffered, streaming file).

    `size` (from a listing) saves asking for it; `capped=False` lifts the size cap (archives).
    """

    def __init__(
        self,
        fs: Any,
        path: str,
        options: RemoteOptions,
        size: int | None = None,
        capped: bool = True,
    ) -> None:
        self.fs, self.path, self.options = fs, path, options
        self.size, self.capped = size, capped

    def __call__(self) -> BinaryIO:
        try:
            handle = self.fs.open(self.path, "rb")
        except Exception as error:  # each backend raises its own types
            raise SourceError(describe_os_error(error)) from error
        size = self.size if self.size is not None else getattr(handle, "size", None)
        if self.capped and size is not None and size > self.options.max_bytes:
            handle.close()
            raise self.options.too_large()
        return handle
