"""Decode an image file and turn it into the model's input array, as PreprocessConfig says.

The pipeline matches transformers' ViTHybridImageProcessor bit for bit on 8-bit images: resize
(PIL, the config's resample filter) -> center crop (zero padding when the image is too small) ->
rescale (float64, then float32) -> normalize (float32). Where the reference is lossy we do better on
purpose: transparent images are composited over white and 16/32-bit images are scaled rather than
clipped to white.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import stat
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from vithybrid_cli.data.formats import register_plugins, sniff_missing, undecodable_message
from vithybrid_cli.data.sources import SourceError
from vithybrid_cli.model.config import PreprocessConfig, target_size

logger = logging.getLogger(__name__)

# JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale in the DCT domain, which is cheaper but a bit
# softer than a full decode followed by an antialiased bicubic resize. Keeping the decoded image at
# least this many times larger than the resize target leaves the final (>= 3x) reduction to the
# bicubic filter, so the output stays within ~1% mean absolute difference of the full decode. At 3
# (rather than 2) the model's embeddings stay within cosine 0.9995 of a full decode's on the
# benchmark photos (0.9990 at 2), for ~10% more decode time.
DRAFT_OVERSAMPLE = 3

# Resizing a 1 x 100000 strip to a 384 shortest edge would allocate gigabytes only to crop most of
# it away; past this ratio of resized to cropped area only the cropped region is resampled.
_CROP_BOX_RESIZE_RATIO = 8

_EXIF_ORIENTATION = 0x0112
_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_INT32_MAX = 2**31 - 1


class ImageError(Exception):
    """A file that cannot be turned into an image; str() is one user-facing line."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")

    def __reduce__(self):  # the default pickling would call __init__ with one argument
        return type(self), (self.path, self.message)


# --------------------------------------------------------------------------------------------
# Decoding


@runtime_checkable
class Openable(Protocol):
    """What inputs.InputItem is to decoding: a name for messages and a way to get the bytes."""

    path: str

    def open(self) -> IO[bytes]: ...


ImageSource = str | os.PathLike | bytes | Openable | IO[bytes]


def source_name(source: ImageSource) -> str:
    """How `source` is named in errors and records: the path, the item's path, the file's name."""
    if isinstance(source, (str, bytes, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    if isinstance(source, Openable):
        return source.path
    name = getattr(source, "name", None)
    return os.fsdecode(name) if isinstance(name, (str, bytes)) else "<stream>"


def _open_source(source: ImageSource) -> contextlib.AbstractContextManager[IO[bytes]]:
    if isinstance(source, Openable):
        # A local item is opened by its path, exactly as a path is; the others by their opener
        # (an HTTP download, a tar member, an object-store file, stdin's bytes), closed after use.
        local = getattr(source, "local_path", None)
        if local is None:
            return source.open()
        source = local
    if isinstance(source, (str, bytes, os.PathLike)):
        return open(source, "rb")
    return contextlib.nullcontext(source)  # the caller's file object: the caller closes it


def _seekable(fp: IO[bytes]) -> IO[bytes]:
    """`fp` itself when Pillow can seek in it, else its bytes in memory (Pillow would anyway)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):
        if fp.seekable():
            return fp
    return io.BytesIO(fp.read())


def _is_empty(fp: IO[bytes]) -> bool:
    with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
        info = os.fstat(fp.fileno())
        if stat.S_ISREG(info.st_mode):
            return info.st_size == 0
    position = fp.tell()
    end = fp.seek(0, os.SEEK_END)
    fp.seek(position)
    return end == position


def load_image(source: ImageSource, *, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode the first frame of `source`, upright (EXIF orientation) and as 8-bit RGB.

    `source` is a local path, an InputItem (anything with `.path` and `.open()`: URLs, tar
    members, object-store files, stdin) or a binary file object. `min_size=(W, H)` allows
    reduced-size JPEG decoding as long as the image still covers DRAFT_OVERSAMPLE * (W, H).
    Every failure, fetching the bytes included, raises ImageError naming the source.
    """
    display = source_name(source)
    register_plugins()  # the extras' openers (HEIC, JPEG XL), in whichever process decodes
    try:
        with _open_source(source) as opened:
            fp = _seekable(opened)
            if _is_empty(fp):
                raise ImageError(display, "empty file (0 bytes)")
            try:
                with _decompression_bombs_as_errors():
                    image = _decode(fp, min_size)
            except Image.UnidentifiedImageError as error:
                raise ImageError(display, _unidentified(fp, display)) from error
            return to_rgb(image)
    except ImageError:
        raise
    except SourceError as error:  # download or archive failure: already one line
        raise ImageError(display, error.message) from error
    except Exception as error:  # Pillow's plugins raise many types on corrupt data
        raise ImageError(display, _describe(error)) from error


def _unidentified(fp: IO[bytes], name: str) -> str:
    """Why Pillow knows no opener for `fp`: a format this install lacks (by content, else by
    `name`), with the way to add it, or none at all."""
    head = b""
    with contextlib.suppress(OSError, ValueError):
        fp.seek(0)
        head = fp.read(12)
    missing = sniff_missing(head, name)
    return undecodable_message(missing) if missing else "not a recognized image format"


def _decode(fp, min_size: tuple[int, int] | None) -> Image.Image:
    image = Image.open(fp)
    orientation = _orientation(image)
    if min_size is not None and image.format in ("JPEG", "MPO"):
        _draft(image, min_size, swap=orientation in (5, 6, 7, 8))
    image.load()  # force the full decode now so truncation surfaces here
    if orientation in _ORIENTATION_TRANSPOSE:
        image = image.transpose(_ORIENTATION_TRANSPOSE[orientation])
    return image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # broken EXIF must not cost an otherwise readable photo
        logger.debug("ignoring unreadable EXIF data", exc_info=True)
        return 1


def _draft(image: Image.Image, min_size: tuple[int, int], *, swap: bool) -> None:
    width, height = min_size
    if swap:  # min_size is for the upright image; the JPEG stores it rotated
        width, height = height, width
    need = (max(1, DRAFT_OVERSAMPLE * width), max(1, DRAFT_OVERSAMPLE * height))
    if image.width < 2 * need[0] or image.height < 2 * need[1]:
        return  # draft cannot halve it without going below what the resize needs
    original = image.size
    image.draft("RGB", need)
    logger.debug("JPEG draft decode %s -> %s", original, image.size)


@contextmanager
def _decompression_bombs_as_errors() -> Iterator[None]:
    """Refuse images Pillow merely warns about; log its other warnings instead of printing them.

    catch_warnings swaps the process-wide filter list; concurrent threads may see each other's
    filters, which only ever adds this module's two harmless filters.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse those too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield
    for warning in caught:
        logger.debug("Pillow: %s", warning.message)


def _describe(error: BaseException) -> str:
    if isinstance(error, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        limit = Image.MAX_IMAGE_PIXELS
        return f"image too large to decode safely (over {limit} pixels; decompression bomb?)"
    if isinstance(error, FileNotFoundError):
        return "no such file or directory"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, PermissionError):
        return "permission denied"
    if isinstance(error, Image.UnidentifiedImageError):
        return "not a recognized image format"
    if isinstance(error, MemoryError):
        return "out of memory while decoding"
    text = " ".join(str(getattr(error, "strerror", None) or error).split())
    if "truncated" in text:
        return f"truncated image data ({text})"
    if isinstance(error, OSError):
        return f"cannot decode image: {text}" if text else "cannot decode image"
    return f"corrupt or unsupported image ({type(error).__name__}: {text})"


# --------------------------------------------------------------------------------------------
# Colour conversion


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: alpha composited over white, high bit depths scaled, else PIL's convert."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(image)
    if mode in _ALPHA_MODES or (mode in ("P", "L") and "transparency" in image.info):
        return _composite_over_white(image)
    return image.convert("RGB")  # the reference's conversion, kept for parity


def _composite_over_white(image: Image.Image) -> Image.Image:
    # White is what most viewers show behind transparent pixels (logos, icons, scans).
    if image.mode == "La":
        image = image.convert("LA")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    values = np.asarray(image)
    if image.mode == "F":
        scaled = _float_to_unit255(values)
    elif image.mode.startswith("I;16"):
        scaled = values.astype(np.float32) / 257.0  # exact inverse of 8-bit * 257
    else:
        scaled = _int32_to_unit255(values)
    gray = np.rint(np.clip(scaled, 0.0, 255.0)).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


def _float_to_unit255(values: np.ndarray) -> np.ndarray:
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=255.0, neginf=0.0)
    if values.size and float(values.max()) <= 1.0:
        return values * 255.0  # floats in 0..1 (e.g. TIFF from scientific software)
    return values


def _int32_to_unit255(values: np.ndarray) -> np.ndarray:
    # "I" says nothing of the source bit depth; guess it from the largest value present.
    peak = int(values.max()) if values.size else 0
    if peak <= 255:
        return values.astype(np.float32)
    if peak <= 65535:
        return values.astype(np.float32) / 257.0
    return values.astype(np.float64) * (255.0 / _INT32_MAX)


# --------------------------------------------------------------------------------------------
# Geometry and normalisation


def decode_min_size(
    config: PreprocessConfig, image_size: tuple[int, int] | None = None
) -> tuple[int, int] | None:
    """(W, H) the decoded image must cover so the resize still downsamples; None: full size."""
    if _uses_cover(config, image_size):
        return target_size(config, image_size)
    if not config.do_resize:
        return None
    if "shortest_edge" in config.size:
        edge = int(config.size["shortest_edge"])
        return edge, edge
    return int(config.size["width"]), int(config.size["height"])


def _uses_cover(config: PreprocessConfig, image_size: tuple[int, int] | None) -> bool:
    # image_size equal to what the config already produces keeps the reference's exact path.
    if image_size is None:
        return False
    return not (config.do_center_crop and target_size(config, image_size) == config.target_size)


def _resized_size(
    config: PreprocessConfig, image_size: tuple[int, int] | None, width: int, height: int
) -> tuple[int, int] | None:
    if _uses_cover(config, image_size):
        out_w, out_h = target_size(config, image_size)
        if out_w / width >= out_h / height:
            return out_w, max(out_h, int(height * out_w / width))
        return max(out_w, int(width * out_h / height)), out_h
    if not config.do_resize:
        return None
    if "shortest_edge" in config.size:
        # transformers' get_resize_output_image_size(default_to_square=False): int() truncates.
        edge = int(config.size["shortest_edge"])
        if width <= height:
            return edge, int(edge * height / width)
        return int(edge * width / height), edge
    if "height" in config.size and "width" in config.size:
        return int(config.size["width"]), int(config.size["height"])
    raise ValueError(f"size must have 'shortest_edge' or 'height' and 'width', got {config.size}")


def _crop_size(
    config: PreprocessConfig, image_size: tuple[int, int] | None
) -> tuple[int, int] | None:
    if _uses_cover(config, image_size):
        return target_size(config, image_size)
    if not config.do_center_crop:
        return None
    return int(config.crop_size["width"]), int(config.crop_size["height"])


def crop_box(
    size: tuple[int, int], config: PreprocessConfig, image_size: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """(left, top, right, bottom): the region of a (W, H) image that preprocess_image keeps.

    The resize and centre crop of preprocess_image, mapped back to the image's pixels and
    rounded to the nearest one: transformers' or timm's rounding, and timm's crop_pct (a 224
    input seen from a 248 shortest edge covers the centre 90%). Zero padding (a crop larger than
    the resized image) adds none.
    """
    width, height = size
    if min(width, height) < 1:
        raise ValueError(f"sizes must be positive, got image {size}")
    resized_w, resized_h = _resized_size(config, image_size, width, height) or (width, height)
    crop_w, crop_h = _crop_size(config, image_size) or (resized_w, resized_h)
    left = crop_offset(resized_w, crop_w, config.pipeline)
    top = crop_offset(resized_h, crop_h, config.pipeline)
    scale_x, scale_y = width / resized_w, height / resized_h
    return (
        round(max(0, left) * scale_x),
        round(max(0, top) * scale_y),
        round(min(resized_w, left + crop_w) * scale_x),
        round(min(resized_h, top + crop_h) * scale_y),
    )


def crop_offset(length: int, crop: int, pipeline: str = "transformers") -> int:
    """Where a centre crop of `crop` starts in `length` pixels (negative: it pads).

    transformers floors (length - crop) / 2; torchvision (timm) rounds it half to even.
    """
    if pipeline == "timm":
        return int(round((length - crop) / 2.0))
    return (length - crop) // 2


def _resize(
    image: Image.Image,
    size: tuple[int, int],
    crop: tuple[int, int] | None,
    resample: int,
    pipeline: str = "transformers",
) -> tuple[Image.Image, tuple[int, int] | None]:
    """Resize to `size`; for extreme aspect ratios resample only the centre crop window."""
    if image.size == size:
        return image, crop
    out_w, out_h = size
    if crop is None or out_w * out_h <= _CROP_BOX_RESIZE_RATIO * crop[0] * crop[1]:
        return image.resize(size, resample=resample), crop
    # Same source->output mapping as the full resize, restricted to the window (float box).
    crop_w, crop_h = min(crop[0], out_w), min(crop[1], out_h)
    left, top = crop_offset(out_w, crop_w, pipeline), crop_offset(out_h, crop_h, pipeline)
    scale_x, scale_y = image.width / out_w, image.height / out_h
    box = (left * scale_x, top * scale_y, (left + crop_w) * scale_x, (top + crop_h) * scale_y)
    window = image.resize((crop_w, crop_h), resample=resample, box=box)
    logger.debug("resized only the %dx%d crop window of a %dx%d resize", crop_w, crop_h, *size)
    return window, crop


def _center_crop(
    pixels: np.ndarray, crop: tuple[int, int], pipeline: str = "transformers"
) -> np.ndarray:
    """transformers' (or torchvision's) center_crop on an (H, W, C) array, zero padding
    included."""
    crop_w, crop_h = crop
    height, width = pixels.shape[:2]
    top, left = crop_offset(height, crop_h, pipeline), crop_offset(width, crop_w, pipeline)
    if top >= 0 and left >= 0:
        return pixels[top : top + crop_h, left : left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros((new_h, new_w) + pixels.shape[2:], dtype=pixels.dtype)
    pad_top, pad_left = math.ceil((new_h - height) / 2), math.ceil((new_w - width) / 2)
    padded[pad_top : pad_top + height, pad_left : pad_left + width] = pixels
    top, left = top + pad_top, left + pad_left
    return padded[max(0, top) : min(new_h, top + crop_h), max(0, left) : min(new_w, left + crop_w)]


@functools.lru_cache(maxsize=16)
def _value_table(
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    pipeline: str = "transformers",
) -> np.ndarray:
    """(3, 256) float32: what rescale + normalize make of each uint8 value, per channel.

    Computed with the reference's exact dtype steps, so a lookup is bit-identical to it and
    cheaper than any arithmetic over the image: transformers rescales in float64, torchvision's
    ToTensor (timm) divides by 255 in float32.
    """
    values = np.arange(256, dtype=np.uint8)[None, :].repeat(3, axis=0)
    table = values.astype(np.float32)
    if pipeline == "timm":
        table = table / np.float32(255)
    elif do_rescale:
        table = (values.astype(np.float64) * rescale_factor).astype(np.float32)
    if do_normalize:
        if len(mean) != 3 or len(std) != 3:
            raise ValueError("image_mean and image_std need 3 values for RGB images")
        mean_array = np.array(mean, dtype=np.float32)[:, None]
        std_array = np.array(std, dtype=np.float32)[:, None]
        table = (table - mean_array) / std_array
    table = np.ascontiguousarray(table, dtype=np.float32)
    table.flags.writeable = False
    return table


def _normalize(pixels: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    table = _value_table(
        bool(config.do_rescale),
        float(config.rescale_factor),
        bool(config.do_normalize),
        tuple(float(v) for v in config.image_mean),
        tuple(float(v) for v in config.image_std),
        config.pipeline,
    )
    out = np.empty((3,) + pixels.shape[:2], dtype=np.float32)
    for channel in range(3):
        np.take(table[channel], pixels[:, :, channel], out=out[channel])
    return out


def preprocess_image(
    image: Image.Image, config: PreprocessConfig, image_size: tuple[int, int] | None = None
) -> np.ndarray:
    """(3, H, W) float32 model input, identical to ViTHybridImageProcessor for `config`.

    `image_size=(W, H)` (when it differs from the config's output) resizes the image to cover
    W x H and center-crops it to exactly that.
    """
    image = to_rgb(image)  # always: the model needs three channels whatever do_convert_rgb says
    crop = _crop_size(config, image_size)
    size = _resized_size(config, image_size, image.width, image.height)
    if size is not None:
        image, crop = _resize(image, size, crop, config.resample, config.pipeline)
    pixels = np.asarray(image)
    if crop is not None:
        pixels = _center_crop(pixels, crop, config.pipeline)
    return _normalize(pixels, config)


def load_and_preprocess(
    source: ImageSource,
    config: PreprocessConfig,
    image_size: tuple[int, int] | None = None,
    *,
    fast_decode: bool = True,
) -> np.ndarray:
    """load_image + preprocess_image; fast_decode allows reduced-size JPEG decoding.

    `source` is anything load_image takes: a path, an InputItem, a binary file object.
    """
    min_size = decode_min_size(config, image_size) if fast_decode else None
    image = load_image(source, min_size=min_size)
    return preprocess_image(image, config, image_size)
