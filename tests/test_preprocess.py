"""Preprocessing: parity with transformers' ViTHybridImageProcessor, decoding and its failures."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import skimage.data
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from vithybrid_cli.data import preprocess
from vithybrid_cli.data.preprocess import (
    DRAFT_OVERSAMPLE,
    ImageError,
    decode_min_size,
    load_and_preprocess,
    load_image,
    preprocess_image,
    to_rgb,
)
from vithybrid_cli.model.config import PreprocessConfig, target_size

# google's preprocessor_config.json, without the file's bookkeeping key
GOOGLE_PREPROCESSOR = {
    key: value
    for key, value in checkpoints.GOOGLE_PREPROCESSOR.items()
    if key != "image_processor_type"
}


@pytest.fixture(scope="module")
def config() -> PreprocessConfig:
    return PreprocessConfig.from_dict(GOOGLE_PREPROCESSOR)


@pytest.fixture(scope="module")
def reference():
    from transformers.models.deprecated.vit_hybrid.image_processing_vit_hybrid import (
        ViTHybridImageProcessor,
    )

    processor = ViTHybridImageProcessor(**GOOGLE_PREPROCESSOR)

    def run(image: Image.Image, **kwargs) -> np.ndarray:
        return processor(image, return_tensors="np", **kwargs)["pixel_values"][0]

    return run


def _photos() -> dict[str, Image.Image]:
    chelsea = Image.fromarray(skimage.data.chelsea())
    astronaut = Image.fromarray(skimage.data.astronaut())
    coffee = Image.fromarray(skimage.data.coffee())
    return {
        "chelsea": chelsea,
        "astronaut": astronaut,
        "coffee": coffee,
        "camera_gray": Image.fromarray(skimage.data.camera()),
        "chelsea_portrait": chelsea.transpose(Image.Transpose.ROTATE_90),
        "coffee_palette": coffee.quantize(colors=64),
        "astronaut_cmyk": astronaut.convert("CMYK"),
        "chelsea_wide_small": chelsea.resize((211, 97)),
        "coffee_tall_small": coffee.resize((57, 190)),
        "astronaut_tiny": astronaut.resize((17, 23)),
        "chelsea_bilevel": chelsea.convert("1"),
        "coffee_ycbcr": coffee.convert("YCbCr"),
    }


PHOTOS = _photos()


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# ---------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_matches_reference_processor(name, config, reference):
    image = PHOTOS[name]
    ours = preprocess_image(image, config)
    expected = reference(image)
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape == (3, 384, 384)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"size": {"shortest_edge": 400}, "crop_size": {"height": 384, "width": 352}},
        {"size": {"shortest_edge": 200}, "crop_size": {"height": 256, "width": 256}},  # pads
        {"size": {"height": 300, "width": 320}, "do_center_crop": False},
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]},
        {"do_normalize": False},
        {"do_resize": False, "crop_size": {"height": 224, "width": 224}},
        {"resample": 2},
    ],
)
def test_matches_reference_for_other_settings(overrides, reference):
    settings_ = {**GOOGLE_PREPROCESSOR, **overrides}
    config = PreprocessConfig.from_dict(settings_)
    image = PHOTOS["chelsea"]
    ours = preprocess_image(image, config)
    expected = reference(image, **overrides)
    assert ours.shape == expected.shape
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_load_and_preprocess_from_files_matches_reference(tmp_path, config, reference):
    for name in ("chelsea", "camera_gray", "coffee_palette"):
        image = PHOTOS[name]
        path = _write(tmp_path / f"{name}.png", _encode(image, "PNG"))
        ours = load_and_preprocess(path, config, fast_decode=False)
        with Image.open(path) as reopened:
            expected = reference(reopened.copy())
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_extreme_aspect_ratio_resamples_only_the_crop(config, reference):
    strip = PHOTOS["coffee"].resize((40, 900))  # full resize would be 384 x 8640
    ours = preprocess_image(strip, config)
    assert ours.shape == (3, 384, 384)
    # Exact parity is given up here (float box offsets): within 3/255 of the full resize.
    np.testing.assert_allclose(ours, reference(strip), rtol=0, atol=3 * 2 / 255 + 1e-6)


def test_image_size_covers_then_crops(config):
    out = preprocess_image(PHOTOS["chelsea"], config, image_size=(320, 256))
    assert out.shape == (3, 256, 320)
    portrait = preprocess_image(PHOTOS["chelsea_portrait"], config, image_size=(320, 256))
    assert portrait.shape == (3, 256, 320)
    assert np.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    assert target_size(config, (320, 256)) == (320, 256)
    assert target_size(config) == (384, 384)


def test_image_size_equal_to_config_is_the_reference_path(config, reference):
    image = PHOTOS["astronaut"]
    np.testing.assert_allclose(
        preprocess_image(image, config, image_size=(384, 384)), reference(image), atol=1e-5
    )


def test_image_size_cover_matches_reference_at_that_size(config, reference):
    # Covering W x W is exactly "shortest edge W, then crop W x W".
    image = PHOTOS["coffee"]
    expected = reference(
        image, size={"shortest_edge": 480}, crop_size={"height": 480, "width": 480}
    )
    np.testing.assert_allclose(preprocess_image(image, config, (480, 480)), expected, atol=1e-5)


# ---------------------------------------------------------------------------------- colours


def test_sixteen_bit_gray_is_scaled_not_clipped(tmp_path, config, reference):
    gray8 = np.asarray(PHOTOS["camera_gray"])
    gray16 = Image.fromarray(gray8.astype(np.uint16) * 257)
    path = _write(tmp_path / "gray16.png", _encode(gray16, "PNG"))
    image = load_image(path)
    assert image.mode == "RGB"
    ours = load_and_preprocess(path, config, fast_decode=False)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
        clipped = reference(raw.copy())
    assert (clipped > 0.99).mean() > 0.9  # the reference clips nearly all of it to white
    assert ours.min() < 0
    expected = preprocess_image(Image.fromarray(gray8), config)
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("values", "mode"),
    [
        (np.array([[0, 65535]], dtype=np.uint16), "I;16"),
        (np.array([[0, 255]], dtype=np.int32), "I"),
        (np.array([[0, 65535]], dtype=np.int32), "I"),
        (np.array([[0, 2**31 - 1]], dtype=np.int32), "I"),
        (np.array([[0.0, 1.0]], dtype=np.float32), "F"),
        (np.array([[0.0, 255.0]], dtype=np.float32), "F"),
        (np.array([[-5.0, 900.0]], dtype=np.float32), "F"),
    ],
)
def test_high_depth_modes_span_black_to_white(values, mode):
    image = Image.fromarray(values)
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb.shape == (1, 2, 3)
    assert rgb[0, 0].tolist() == [0, 0, 0] and rgb[0, 1].tolist() == [255, 255, 255]


def test_sixteen_bit_big_endian():
    image = Image.frombytes("I;16B", (2, 1), bytes([0x00, 0x00, 0x80, 0x80]))
    assert np.asarray(to_rgb(image))[0, :, 0].tolist() == [0, 128]


def test_rgba_is_composited_over_white():
    pixels = np.zeros((2, 2, 4), dtype=np.uint8)
    pixels[0, 0] = (10, 20, 30, 0)  # fully transparent -> white
    pixels[0, 1] = (10, 20, 30, 255)  # opaque -> unchanged
    pixels[1, 0] = (0, 0, 0, 128)  # half black over white -> mid gray
    rgb = np.asarray(to_rgb(Image.fromarray(pixels)))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [10, 20, 30]
    assert 120 <= rgb[1, 0, 0] <= 135
    for mode in ("LA", "PA", "La", "RGBa"):
        converted = to_rgb(Image.fromarray(pixels).convert(mode))
        assert converted.mode == "RGB"


def test_palette_transparency_is_composited_over_white(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    palette.putpixel((0, 0), 0)
    palette.putpixel((1, 0), 1)
    path = _write(tmp_path / "p.png", _encode(palette, "PNG", transparency=0))
    rgb = np.asarray(load_image(path))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [200, 10, 10]


def test_opaque_rgba_matches_reference(config, reference):
    image = PHOTOS["chelsea"].convert("RGBA")
    np.testing.assert_allclose(preprocess_image(image, config), reference(image), atol=1e-5)


# ---------------------------------------------------------------------------------- decoding


def test_exif_orientation_is_applied(tmp_path):
    photo = PHOTOS["chelsea"]  # 451 x 300, landscape as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _write(tmp_path / "rotated.jpg", _encode(photo, "JPEG", quality=95, exif=exif))
    upright = load_image(path)
    assert upright.size == (300, 451)
    expected = np.asarray(photo.transpose(Image.Transpose.ROTATE_270), dtype=np.float32)
    assert np.abs(np.asarray(upright, dtype=np.float32) - expected).mean() < 3


def test_multi_frame_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 6), color) for color in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50)
    image = load_image(str(path))
    assert image.mode == "RGB" and image.size == (8, 6)
    assert np.asarray(image)[0, 0].tolist() == [255, 0, 0]


def test_fast_decode_uses_draft_and_stays_close(tmp_path, config):
    big = PHOTOS["chelsea"].resize((451 * 8, 300 * 8), Image.Resampling.BICUBIC)
    path = _write(tmp_path / "big.jpg", _encode(big, "JPEG", quality=92))
    assert decode_min_size(config) == (384, 384)
    decoded = load_image(path, min_size=(384, 384))
    assert decoded.size == (1804, 1200)  # halved: 1200 >= DRAFT_OVERSAMPLE * 384
    assert min(decoded.size) >= DRAFT_OVERSAMPLE * 384
    assert load_image(path).size == big.size
    fast = load_and_preprocess(path, config)
    full = load_and_preprocess(path, config, fast_decode=False)
    assert fast.shape == full.shape == (3, 384, 384)
    assert np.abs(fast - full).mean() < 0.01


def test_fast_decode_accounts_for_exif_rotation(tmp_path):
    stored = PHOTOS["chelsea"].resize((3200, 800))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _write(tmp_path / "rot.jpg", _encode(stored, "JPEG", exif=exif))
    # Upright it is 800 wide x 3200 tall; the target (W=100, H=500) needs 1500 of height,
    # i.e. the stored width 3200 may only be halved.
    image = load_image(path, min_size=(100, 500))
    assert image.size == (400, 1600)


def test_fast_decode_never_below_oversampled_target(tmp_path):
    photo = PHOTOS["coffee"].resize((1000, 700))
    path = _write(tmp_path / "small.jpg", _encode(photo, "JPEG"))
    assert load_image(path, min_size=(384, 384)).size == (1000, 700)


# ---------------------------------------------------------------------------------- errors


def _assert_image_error(path: str, fragment: str) -> ImageError:
    with pytest.raises(ImageError) as caught:
        load_image(path)
    error = caught.value
    assert error.path == path
    assert str(error) == f"{path}: {error.message}"
    assert "\n" not in str(error)
    assert fragment in error.message
    return error


def test_missing_file(tmp_path):
    _assert_image_error(str(tmp_path / "nope.jpg"), "no such file")


def test_directory_is_an_error(tmp_path):
    _assert_image_error(str(tmp_path), "directory")


def test_zero_byte_file(tmp_path):
    _assert_image_error(_write(tmp_path / "empty.jpg", b""), "empty")


def test_text_file_named_jpg(tmp_path):
    _assert_image_error(_write(tmp_path / "notes.jpg", b"hello, not a picture\n"), "not a")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_is_an_error(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)
    data = _encode(PHOTOS["astronaut"], fmt)
    path = _write(tmp_path / f"cut.{fmt.lower()}", data[: len(data) // 2])
    _assert_image_error(path, "")


@pytest.mark.parametrize("factor", [1.5, 3])  # Pillow warns below 2x the limit, raises above
def test_decompression_bomb_is_an_error(tmp_path, monkeypatch, factor):
    path = _write(tmp_path / "bomb.png", _encode(Image.new("L", (100, 100)), "PNG"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(10_000 / factor))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out as a warning either
        _assert_image_error(path, "too large")


def test_crafted_huge_png_header_is_an_error(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)  # 10^10 RGB pixels
    idat = zlib.compress(b"\x00" * 64)
    data = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    _assert_image_error(_write(tmp_path / "huge.png", data), "too large")


def test_image_error_pickles():
    error = pickle.loads(pickle.dumps(ImageError("a.jpg", "broken")))
    assert (error.path, error.message, str(error)) == ("a.jpg", "broken", "a.jpg: broken")


def test_bytes_path(tmp_path):
    path = _write(tmp_path / "ok.png", _encode(PHOTOS["astronaut_tiny"], "PNG"))
    assert load_image(path.encode()).size == (17, 23)


# ---------------------------------------------------------------------------------- property

_MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"]
_FORMATS = {
    "PNG": {"1", "L", "P", "RGB", "RGBA", "LA", "I;16"},
    "JPEG": {"L", "RGB", "CMYK"},
    "GIF": {"L", "P"},
    "TIFF": set(_MODES),
}


def _random_image(data, width: int, height: int, mode: str) -> Image.Image:
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    image = Image.fromarray(rgb)
    if mode in ("I;16", "I", "F"):
        values = rng.integers(0, 65536, size=(height, width))
        if mode == "F":
            return Image.fromarray(values.astype(np.float32) / 65535.0)
        if mode == "I":
            return Image.fromarray(values.astype(np.int32))
        return Image.fromarray(values.astype(np.uint16))
    if mode == "P":
        return image.convert("RGB").quantize(colors=16)
    return image.convert(mode)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_random_images_and_corruption_never_crash(tmp_path, data):
    width = data.draw(st.sampled_from([1, 2, 3, 64]) | st.integers(1, 64), label="width")
    height = data.draw(st.sampled_from([1, 2, 3, 64]) | st.integers(1, 64), label="height")
    mode = data.draw(st.sampled_from(_MODES), label="mode")
    image = _random_image(data, width, height, mode)
    config = PreprocessConfig.from_dict(GOOGLE_PREPROCESSOR)
    image_size = data.draw(st.sampled_from([None, (64, 48)]), label="image_size")
    out = preprocess_image(image, config, image_size)
    expected_shape = (3, 384, 384) if image_size is None else (3, 48, 64)
    assert out.shape == expected_shape and out.dtype == np.float32 and np.isfinite(out).all()

    fmt = data.draw(
        st.sampled_from([f for f, modes in _FORMATS.items() if mode in modes] or ["TIFF"])
    )
    encoded = bytearray(_encode(image, fmt))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(encoded) - 1), st.integers(0, 255)), max_size=6)
    )
    for offset, value in flips:
        encoded[offset] = value
    if data.draw(st.booleans(), label="truncate"):
        encoded = encoded[: data.draw(st.integers(0, len(encoded)))]
    path = _write(tmp_path / "fuzz.img", bytes(encoded))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's warnings must not leak out either
            out = load_and_preprocess(path, config, image_size)
    except ImageError as error:
        assert error.path == path and "\n" not in str(error)
        return
    assert out.shape == expected_shape and out.dtype == np.float32 and np.isfinite(out).all()


def test_module_does_not_import_torch():
    assert "torch" not in preprocess.__dict__
