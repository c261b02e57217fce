"""Attention maps: rollout against an independent numpy version, grids, the task, pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vithybrid_cli.data.preprocess import crop_box as preprocess_crop_box
from vithybrid_cli.data.preprocess import preprocess_image
from vithybrid_cli.model.attention_maps import (
    HEAD_FUSIONS,
    attention_grid,
    attention_rollout,
    last_layer_attention,
)
from vithybrid_cli.model.config import PreprocessConfig, ViTHybridConfig
from vithybrid_cli.model.model import ViTHybrid, ViTHybridOutput
from vithybrid_cli.pipeline.tasks import attention_task
from vithybrid_cli.report.attention import (
    OUTSIDE_BOX_BRIGHTNESS,
    colormap_lut,
    heatmap,
    overlay,
)

# google's preprocessing: shortest edge 384, centre crop 384x384
GOOGLE = PreprocessConfig.from_dict(
    {"size": {"shortest_edge": 384}, "crop_size": {"height": 384, "width": 384}}
)


def crop_box(image_size, input_size, config=GOOGLE):
    """The box preprocessing keeps of an image for a model input of `input_size`."""
    native = config.target_size == tuple(input_size)
    return preprocess_crop_box(image_size, config, None if native else input_size)


# ----------------------------------------------------------------------------- helpers


def random_attentions(
    layers: int, batch: int, heads: int, tokens: int, seed: int = 0
) -> list[torch.Tensor]:
    """Row-stochastic (B, heads, T, T) attentions, like softmax outputs."""
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, heads, tokens, tokens, generator=generator).mul(2).softmax(dim=-1)
        for _ in range(layers)
    ]


def numpy_rollout(
    attentions: list[np.ndarray], head_fusion: str, discard_ratio: float
) -> np.ndarray:
    """Straightforward per-image float64 rollout, written from the vit-explain recipe."""
    fuse = {"mean": np.mean, "max": np.max, "min": np.min}[head_fusion]
    batch, _, tokens, _ = attentions[0].shape
    identity = np.eye(tokens)
    maps = []
    for b in range(batch):
        result = np.eye(tokens)
        for layer in attentions:
            fused = fuse(layer[b].astype(np.float64), axis=0)
            flat = fused.flatten()
            lowest = np.argsort(flat, kind="stable")[: int(tokens * tokens * discard_ratio)]
            flat[lowest[lowest != 0]] = 0.0
            fused = flat.reshape(tokens, tokens)
            mixed = (fused + identity) / 2
            mixed = mixed / mixed.sum(axis=1, keepdims=True)
            result = mixed @ result
        row = result[0, 1:]
        maps.append(row / row.max())
    return np.stack(maps)


def one_hot_cls(layers: int, tokens: int, targets: list[int], heads: int = 2) -> list[torch.Tensor]:
    """Identity attentions except that, in layer i, CLS puts all its weight on token targets[i]."""
    out = []
    for target in targets[:layers]:
        layer = torch.eye(tokens).repeat(1, heads, 1, 1)  # (1, heads, T, T)
        layer[:, :, 0, :] = 0.0
        layer[:, :, 0, target] = 1.0
        out.append(layer)
    return out


TINY_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 64,
    "backbone_config": {
        "depths": [1, 1, 1],
        "hidden_sizes": [32, 64, 128, 256],
        "embedding_size": 16,
        "num_groups": 4,
        "out_features": ["stage3"],
        "global_padding": "same",
        "layer_type": "bottleneck",
        "embedding_dynamic_padding": True,
    },
    "id2label": {"0": "a", "1": "b", "2": "c"},
}


@pytest.fixture(scope="module")
def tiny_model() -> ViTHybrid:
    torch.manual_seed(0)
    return ViTHybrid(ViTHybridConfig.from_dict(TINY_CONFIG)).eval()


def smooth_image(width: int, height: int) -> Image.Image:
    """Gradients in x (red) and y (green) plus a soft blob: smooth, and every region distinct."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    red = 255 * x / (width - 1)
    green = 255 * y / (height - 1)
    blue = 255 * np.exp(-(((x - 0.3 * width) / width) ** 2 + ((y - 0.6 * height) / height) ** 2))
    pixels = np.stack([red, green, blue], axis=-1)
    return Image.fromarray(np.rint(pixels).astype(np.uint8))


# ----------------------------------------------------------------------------- rollout


@pytest.mark.parametrize("head_fusion", HEAD_FUSIONS)
@pytest.mark.parametrize("discard_ratio", [0.0, 0.5])
def test_rollout_matches_numpy_reference(head_fusion: str, discard_ratio: float) -> None:
    attentions = random_attentions(layers=4, batch=3, heads=5, tokens=1 + 3 * 4)
    expected = numpy_rollout([a.numpy() for a in attentions], head_fusion, discard_ratio)
    got = attention_rollout(attentions, head_fusion, discard_ratio)
    assert got.dtype == torch.float32
    assert got.shape == (3, 12)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert torch.allclose(got.amax(dim=-1), torch.ones(3))


def test_rollout_discard_changes_the_map_but_keeps_cls_to_cls() -> None:
    attentions = random_attentions(layers=3, batch=2, heads=4, tokens=10, seed=1)
    # Make CLS->CLS the smallest weight of every head so it would be discarded if not protected.
    for layer in attentions:
        layer[:, :, 0, 0] = 0.0
    kept = attention_rollout(attentions, discard_ratio=0.0)
    discarded = attention_rollout(attentions, discard_ratio=0.9)
    assert not torch.allclose(kept, discarded)
    expected = numpy_rollout([a.numpy() for a in attentions], "mean", 0.9)
    np.testing.assert_allclose(discarded.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_rollout_computes_in_float32_for_bfloat16_attentions() -> None:
    attentions = [a.bfloat16() for a in random_attentions(layers=3, batch=2, heads=4, tokens=17)]
    got = attention_rollout(attentions)
    assert got.dtype == torch.float32
    reference = attention_rollout([a.float() for a in attentions])
    torch.testing.assert_close(got, reference)


def test_rollout_of_identity_attention_is_zero_not_nan() -> None:
    tokens = 1 + 2 * 3
    attentions = [torch.eye(tokens).repeat(2, 3, 1, 1) for _ in range(3)]  # (B, heads, T, T)
    for discard_ratio in (0.0, 0.5):
        got = attention_rollout(attentions, discard_ratio=discard_ratio)
        assert got.shape == (2, tokens - 1)
        assert torch.isfinite(got).all()
        assert torch.equal(got, torch.zeros_like(got))
    assert torch.equal(last_layer_attention(attentions), torch.zeros(2, tokens - 1))


def test_rollout_follows_cls_to_the_attended_patch() -> None:
    k = 7
    got = attention_rollout(one_hot_cls(layers=3, tokens=1 + 3 * 5, targets=[1 + k] * 3))
    assert int(got.argmax()) == k
    assert got[0, k] == 1.0


def test_rollout_with_extra_prefix_tokens_drops_them() -> None:
    attentions = random_attentions(layers=2, batch=1, heads=2, tokens=2 + 4)
    got = attention_rollout(attentions, num_prefix_tokens=2)
    assert got.shape == (1, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"head_fusion": "median"}, "head fusion"),
        ({"discard_ratio": 1.0}, "discard_ratio"),
        ({"discard_ratio": -0.1}, "discard_ratio"),
        ({"num_prefix_tokens": 0}, "num_prefix_tokens"),
    ],
)
def test_rollout_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attention_rollout(random_attentions(layers=1, batch=1, heads=1, tokens=5), **kwargs)


def test_rollout_rejects_mismatched_layers() -> None:
    with pytest.raises(ValueError, match="shape"):
        attention_rollout(random_attentions(1, 1, 2, 5) + random_attentions(1, 1, 2, 6))
    with pytest.raises(ValueError, match="no attention"):
        attention_rollout([])


# ----------------------------------------------------------------------------- last layer, grid


@pytest.mark.parametrize("k", [0, 6, 14])
def test_last_layer_picks_last_layer_and_lands_on_the_grid(k: int) -> None:
    h, w = 3, 5
    # The first layer looks elsewhere: only the last one may decide.
    other = (k + 3) % (h * w)
    attentions = one_hot_cls(layers=2, tokens=1 + h * w, targets=[1 + other, 1 + k])
    token_map = last_layer_attention(attentions)
    assert token_map.shape == (1, h * w)
    assert int(token_map.argmax()) == k
    expected = torch.zeros(1, h * w)
    expected[0, k] = 1.0
    assert torch.equal(token_map, expected)
    grid = attention_grid(token_map, (h, w))
    assert grid.shape == (1, h, w)
    assert grid.dtype == np.float32
    assert np.unravel_index(grid[0].argmax(), (h, w)) == (k // w, k % w)


def test_last_layer_is_the_fused_cls_row_of_the_last_layer() -> None:
    attentions = random_attentions(layers=3, batch=2, heads=4, tokens=1 + 6)
    for fusion, reduce in (("mean", np.mean), ("max", np.max), ("min", np.min)):
        row = reduce(attentions[-1].numpy()[:, :, 0, 1:], axis=1)
        expected = row / row.max(axis=-1, keepdims=True)
        np.testing.assert_allclose(last_layer_attention(attentions, fusion).numpy(), expected)


def test_attention_grid_rejects_wrong_size() -> None:
    with pytest.raises(ValueError, match="3x5"):
        attention_grid(torch.zeros(1, 14), (3, 5))


# ----------------------------------------------------------------------------- the task


@pytest.mark.parametrize("method", ["rollout", "last-layer"])
def test_task_on_tiny_model_square_and_wide(tiny_model: ViTHybrid, method: str) -> None:
    task = attention_task(method)
    with torch.inference_mode():
        square = tiny_model(torch.randn(2, 3, 64, 64), output_attentions=True)
        wide = tiny_model(
            torch.randn(1, 3, 64, 96), output_attentions=True, interpolate_pos_encoding=True
        )
    assert wide.grid_size == (4, 6)
    for output, shape, batch in ((square, (4, 4), 2), (wide, (4, 6), 1)):
        grids = task(output)
        assert len(grids) == batch
        for grid in grids:
            assert grid.shape == shape
            assert grid.dtype == np.float32
            assert np.isfinite(grid).all()
            assert grid.max() == pytest.approx(1.0)
            assert grid.min() >= 0.0


def test_task_rollout_equals_direct_call(tiny_model: ViTHybrid) -> None:
    with torch.inference_mode():
        output = tiny_model(torch.randn(1, 3, 64, 64), output_attentions=True)
    (grid,) = attention_task("rollout", "max", 0.3)(output)
    direct = attention_rollout(output.attentions, "max", 0.3).reshape(4, 4).numpy()
    np.testing.assert_array_equal(grid, direct)


def test_task_requires_attentions(tiny_model: ViTHybrid) -> None:
    with torch.inference_mode():
        output = tiny_model(torch.randn(1, 3, 64, 64))
    assert isinstance(output, ViTHybridOutput)
    with pytest.raises(ValueError, match="output_attentions=True"):
        attention_task()(output)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "gradcam"}, "rollout, last-layer"),
        ({"head_fusion": "sum"}, "mean, max, min"),
        ({"discard_ratio": 1.0}, r"\[0, 1\)"),
        ({"discard_ratio": -0.5}, r"\[0, 1\)"),
        ({"method": "last-layer", "discard_ratio": 0.5}, "rollout only"),
    ],
)
def test_task_validates_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        attention_task(**kwargs)


# ----------------------------------------------------------------------------- pictures


def test_colormap_runs_dark_to_bright() -> None:
    lut = colormap_lut()
    assert lut.shape == (256, 3)
    assert lut.dtype == np.uint8
    luminance = lut.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])
    assert luminance[0] < 5 and luminance[-1] > 240
    assert np.diff(luminance).min() > -1.0  # monotone up to rounding


def test_heatmap_size_mode_and_hot_spot() -> None:
    h, w = 3, 5
    grid = np.zeros((h, w), dtype=np.float32)
    grid[1, 3] = 1.0
    image = heatmap(grid, (333, 217))
    assert image.size == (333, 217)
    assert image.mode == "RGB"
    brightness = np.asarray(image, dtype=np.int32).sum(axis=-1)
    y, x = np.unravel_index(brightness.argmax(), brightness.shape)
    assert 3 * 333 / w <= x < 4 * 333 / w
    assert 1 * 217 / h <= y < 2 * 217 / h


def test_heatmap_of_flat_grid_is_uniform() -> None:
    pixels = np.asarray(heatmap(np.full((4, 4), 0.3, dtype=np.float32), (10, 7)))
    assert (pixels == pixels[0, 0]).all()


def test_overlay_alpha_extremes_without_box() -> None:
    image = smooth_image(333, 217)
    grid = np.random.default_rng(0).random((4, 6)).astype(np.float32)
    unchanged = overlay(image, grid, alpha=0.0)
    assert unchanged.size == image.size
    assert unchanged.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(unchanged), np.asarray(image))
    full = overlay(image, grid, alpha=1.0)
    np.testing.assert_array_equal(np.asarray(full), np.asarray(heatmap(grid, image.size)))
    half = np.asarray(overlay(image, grid, alpha=0.5), dtype=np.float64)
    mean = (np.asarray(image, np.float64) + np.asarray(heatmap(grid, image.size))) / 2
    assert np.abs(half - mean).max() <= 0.5 + 1e-9


def test_overlay_with_box_places_heat_inside_and_dims_outside() -> None:
    image = smooth_image(333, 217)
    box = crop_box(image.size, (64, 64))
    left, top, right, bottom = box
    assert (top, bottom) == (0, 217) and 0 < left < right < 333
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[2, 1] = 1.0
    pixels = np.asarray(image, dtype=np.float64)

    out = np.asarray(overlay(image, grid, alpha=1.0, box=box))
    inside = out[top:bottom, left:right]
    np.testing.assert_array_equal(inside, np.asarray(heatmap(grid, (right - left, bottom - top))))
    outside = np.concatenate([out[:, :left], out[:, right:]], axis=1)
    expected = np.rint(
        np.concatenate([pixels[:, :left], pixels[:, right:]], axis=1) * OUTSIDE_BOX_BRIGHTNESS
    )
    np.testing.assert_array_equal(outside, expected)
    brightness = inside.astype(np.int32).sum(axis=-1)
    y, x = np.unravel_index(brightness.argmax(), brightness.shape)
    assert 1 <= x * 4 / (right - left) < 2 and 2 <= y * 4 / (bottom - top) < 3

    untouched = np.asarray(overlay(image, grid, alpha=0.0, box=box))
    np.testing.assert_array_equal(untouched[top:bottom, left:right], pixels[top:bottom, left:right])


def test_overlay_accepts_other_modes_and_rejects_bad_arguments() -> None:
    image = smooth_image(40, 30).convert("L")
    assert overlay(image, np.ones((2, 2), dtype=np.float32)).mode == "RGB"
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.ones((2, 2)), alpha=1.5)
    with pytest.raises(ValueError, match="box"):
        overlay(image, np.ones((2, 2)), box=(0, 0, 41, 30))
    with pytest.raises(ValueError, match="box"):
        overlay(image, np.ones((2, 2)), box=(10, 0, 10, 30))


# ----------------------------------------------------------------------------- crop box


@pytest.mark.parametrize(
    ("image_size", "input_size", "expected"),
    [
        ((640, 480), (384, 384), (80, 0, 560, 480)),  # landscape: resized 512x384, left 64
        ((480, 640), (384, 384), (0, 80, 480, 560)),  # portrait
        ((500, 500), (384, 384), (0, 0, 500, 500)),  # square: nothing cropped
        ((333, 217), (384, 384), (58, 0, 275, 217)),  # upscaled, odd sizes
        ((640, 480), (96, 64), (0, 27, 640, 453)),  # wide input: resized 96x72, top 4
        ((640, 480), (64, 96), (160, 0, 480, 480)),  # tall input: resized 128x96, left 32
    ],
)
def test_crop_box_arithmetic(image_size, input_size, expected) -> None:
    assert crop_box(image_size, input_size) == expected


def test_crop_box_rejects_empty_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        crop_box((0, 10), (64, 64))


def test_crop_box_of_the_checkpoints_own_geometry() -> None:
    """Shortest edge 64 then a 48x48 centre crop: the box is the crop, not a cover of 48x48."""
    config = PreprocessConfig.from_dict(
        {"size": {"shortest_edge": 64}, "crop_size": {"height": 48, "width": 48}}
    )
    # 640x480 -> 85x64 (int truncation), crop 48x48 at (18, 8); back in pixels (x 7.53, x 7.5)
    assert preprocess_crop_box((640, 480), config) == (136, 60, 497, 420)


@pytest.mark.parametrize("image_size", [(300, 200), (200, 300), (257, 257), (1001, 333)])
@pytest.mark.parametrize("input_size", [None, (96, 64)])
def test_crop_box_is_what_preprocessing_keeps(image_size, input_size) -> None:
    """Cropping the box and resizing it to the input gives the model's input (to resampling)."""
    config = PreprocessConfig.from_dict(
        {"size": {"shortest_edge": 64}, "crop_size": {"height": 64, "width": 64}}
    )
    size = input_size or (64, 64)
    image = smooth_image(*image_size)
    model_input = preprocess_image(image, config, input_size)  # (3, H, W) in [-1, 1]
    box = crop_box(image.size, size, config)
    crop = image.crop(box).resize(size, resample=Image.Resampling.BICUBIC)
    # (H, W, 3) -> (3, H, W), same normalization as the config: (x / 255 - 0.5) / 0.5
    ours = np.asarray(crop, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
    assert model_input.shape == ours.shape
    # Exact boxes give ~0 (<= 5e-4 from rounding the box to whole pixels); a box one pixel off
    # in the cropped direction gives 3e-3 to 1e-2 here, unless the image is far larger.
    assert np.abs(model_input - ours).mean() < 2e-3
