"""Which image formats this install decodes, asked of Pillow at run time, and the plugins of
the optional extras (HEIC/HEIF: pillow-heif; JPEG XL: pillow-jxl-plugin).

`register_plugins()` is the one place the extras' openers are registered with Pillow: every
decode path calls it (preprocess.load_image does, so the local decode threads and torchrun
ranks do, and so must any other engine's workers); it imports and registers once per process
and is a flag check after that. The folder walk asks `decodable_extensions()` what to take and
`missing_format()` what to count as skipped, `sniff_image()` whether a file's first bytes
start an image; decoding asks `sniff_missing()` for the hint of a file it cannot identify.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
import warnings
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageFormat:
    """A format the walk knows by its extensions; decodable when Pillow has its opener."""

    name: str  # what users call it
    pillow_id: str  # Pillow's format id (the key of Image.OPEN)
    extensions: tuple[str, ...]
    feature: str | None = None  # a PIL.features codec the opener needs (Pillow built without it)
    extra: str | None = None  # the vithybrid extra whose plugin adds the opener
    module: str | None = None  # the plugin's module, imported by register_plugins

    @property
    def hint(self) -> str:
        """How to make this install decode the format: one line."""
        if self.extra is not None:
            return f'pip install "vithybrid[{self.extra}]"'
        if self.pillow_id == "AVIF":
            return 'needs Pillow >= 11.3 built with AVIF: pip install -U "pillow>=11.3"'
        return f"this Pillow is built without {self.feature or self.name} support"


FORMATS: tuple[ImageFormat, ...] = (
    ImageFormat("JPEG", "JPEG", (".jpg", ".jpeg", ".jpe", ".jfif")),
    ImageFormat("PNG", "PNG", (".png", ".apng")),
    ImageFormat("GIF", "GIF", (".gif",)),
    ImageFormat("BMP", "BMP", (".bmp",)),
    ImageFormat("TIFF", "TIFF", (".tif", ".tiff")),
    ImageFormat("WebP", "WEBP", (".webp",), feature="webp"),
    ImageFormat("PNM", "PPM", (".ppm", ".pgm", ".pbm", ".pnm")),
    ImageFormat("ICO", "ICO", (".ico",)),
    ImageFormat("AVIF", "AVIF", (".avif",), feature="avif"),
    ImageFormat("JPEG 2000", "JPEG2000", (".jp2", ".j2k", ".jpf", ".jpx"), feature="jpg_2000"),
    ImageFormat(
        "HEIC/HEIF", "HEIF", (".heic", ".heif", ".hif"), extra="heif", module="pillow_heif"
    ),
    ImageFormat("JPEG XL", "JXL", (".jxl",), extra="jxl", module="pillow_jxl"),
)
_BY_EXTENSION = {extension: fmt for fmt in FORMATS for extension in fmt.extensions}

# ISO base media file brands (bytes 8-12 of the `ftyp` box) of HEIF stills and AVIF.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_JXL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")

_registered = False
_register_lock = threading.Lock()


def register_plugins() -> None:
    """Register the installed extras' openers with Pillow, once per process (thread-safe).

    A missing plugin is no error: its format stays undecodable and the walk and the error
    records name the extra. pillow-heif's opener also applies the HEIF transforms (rotation,
    mirror) and leaves EXIF orientation at 1, so decoding rotates once, as for a JPEG.
    """
    global _registered
    if _registered:
        return
    with _register_lock:
        if _registered:
            return
        for fmt in FORMATS:
            if fmt.module is not None:
                _register(fmt)
        _registered = True
        decodable_extensions.cache_clear()


def _register(fmt: ImageFormat) -> None:
    try:
        module = importlib.import_module(fmt.module or "")
        if fmt.module == "pillow_heif":
            module.register_heif_opener()
        # pillow_jxl registers its opener on import
    except ImportError:
        logger.debug("%s not installed: %s files are not decoded", fmt.module, fmt.name)
    except Exception:  # a broken plugin must not stop the formats Pillow decodes itself
        logger.warning("cannot register %s (%s files are not decoded)", fmt.module, fmt.name)
        logger.debug("registering %s failed", fmt.module, exc_info=True)


def decodes(fmt: ImageFormat) -> bool:
    """Whether this install decodes `fmt` now (its opener registered, its codec built in)."""
    from PIL import Image, features

    register_plugins()
    Image.init()
    if fmt.pillow_id not in Image.OPEN:
        return False
    if fmt.feature is None:
        return True
    with warnings.catch_warnings():  # a Pillow older than the feature warns "Unknown feature"
        warnings.simplefilter("ignore")
        return bool(features.check(fmt.feature))


@functools.lru_cache(maxsize=1)
def decodable_extensions() -> frozenset[str]:
    """Lower-case extensions (with the dot) of the known formats this install decodes.

    Cached: call `decodable_extensions.cache_clear()` after changing Pillow's openers.
    """
    return frozenset(ext for fmt in FORMATS if decodes(fmt) for ext in fmt.extensions)


def extension(name: str) -> str:
    """`name`'s extension, lower case, with the dot ('' when none): os.path.splitext's, for
    `/`-separated names (paths, archive members, URLs), at a third of its cost (once per file
    of a walk)."""
    dot, start = name.rfind("."), name.rfind("/") + 1
    if dot <= start or not name[start:dot].strip("."):  # none, or a leading dot (.bashrc)
        return ""
    return name[dot:].lower()


def known_extension(name: str) -> bool:
    """Whether `name` ends like a known image format, decodable here or not."""
    return extension(name) in _BY_EXTENSION


def for_extension(ext: str) -> ImageFormat | None:
    """The known format of extension `ext` (with the dot, any case)."""
    return _BY_EXTENSION.get(ext.lower())


def missing_format(name: str) -> ImageFormat | None:
    """The known format `name`'s extension says, when this install cannot decode it."""
    ext = extension(name)
    fmt = _BY_EXTENSION.get(ext)
    return fmt if fmt is not None and ext not in decodable_extensions() else None


SNIFF_BYTES = 12  # what sniff and sniff_image read


def read_head(path: str) -> bytes | None:
    """A local file's first SNIFF_BYTES bytes; None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(SNIFF_BYTES)
    except OSError:
        return None


def sniff(head: bytes) -> ImageFormat | None:
    """HEIF, AVIF or JPEG XL from a file's first 12 bytes (Pillow's own: see sniff_image)."""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in _AVIF_BRANDS:
            return _BY_EXTENSION[".avif"]
        if brand in _HEIF_BRANDS:
            return _BY_EXTENSION[".heic"]
    if head.startswith(_JXL_SIGNATURES):
        return _BY_EXTENSION[".jxl"]
    return None


def sniff_decodable(head: bytes) -> bool:
    """Whether `head` starts a HEIF, AVIF or JPEG XL file that this install decodes."""
    fmt = sniff(head)
    return fmt is not None and fmt.extensions[0] in decodable_extensions()


def sniff_image(head: bytes) -> bool:
    """True when `head` (a file's first 12 bytes) starts a JPEG, PNG, GIF, BMP, TIFF or WEBP,
    or a HEIF, AVIF or JPEG XL file that this install decodes."""
    return (
        head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a"))
        or head.startswith((b"II*\x00", b"MM\x00*"))
        or (head.startswith(b"RIFF") and head[8:12] == b"WEBP")
        or (head.startswith(b"BM") and head[6:10] == b"\x00\x00\x00\x00")  # reserved fields
        or sniff_decodable(head)
    )


def sniff_missing(head: bytes, name: str) -> ImageFormat | None:
    """The known format this install cannot decode that a file is, by content, else by name."""
    fmt = sniff(head)
    if fmt is not None:
        return None if fmt.extensions[0] in decodable_extensions() else fmt
    return missing_format(name)


def undecodable_message(fmt: ImageFormat) -> str:
    """The error of a file in format `fmt` that this install cannot decode: one line."""
    return f"{fmt.name} image, which this install cannot decode: {fmt.hint}"


def format_table() -> list[tuple[ImageFormat, bool]]:
    """Every known format and whether this install decodes it (for `info`)."""
    return [(fmt, decodes(fmt)) for fmt in FORMATS]
