"""Where the model looks: attention rollout, last-layer CLS attention, heatmaps and overlays.

A map is one value per patch token, laid out on the model's (h, w) token grid. It describes the
model's *input crop*, not the whole photo: preprocessing resizes the image and centre-crops it, so
`preprocess.crop_box` gives the region of the image the grid covers (the runner hands it over with
the decoded image) and `overlay(..., box=...)` puts the heat exactly there.

Everything here is a pure function of tensors / arrays / images; nothing prints.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..data.preprocess import to_rgb
from ..files import atomic_write

if TYPE_CHECKING:
    from ..model.model import ViTHybridOutput

HEAD_FUSIONS = ("mean", "max", "min")
METHODS = ("rollout", "last-layer")

# Outside the crop the model saw, the overlay keeps this fraction of the image's brightness: dim
# enough to show the heat does not describe that area, bright enough to keep the context readable.
OUTSIDE_BOX_BRIGHTNESS = 0.6

# Matplotlib's 'inferno' (perceptually uniform, reads well in greyscale and for colour-blind
# viewers) sampled at 17 evenly spaced points; linear interpolation between them stays within
# ~6/255 of the full 256-entry table.
_INFERNO_POINTS = (
    (0.001, 0.000, 0.014),
    (0.042, 0.028, 0.141),
    (0.129, 0.047, 0.291),
    (0.238, 0.037, 0.396),
    (0.342, 0.062, 0.429),
    (0.441, 0.099, 0.432),
    (0.541, 0.135, 0.415),
    (0.640, 0.171, 0.381),
    (0.736, 0.216, 0.330),
    (0.817, 0.271, 0.270),
    (0.890, 0.348, 0.198),
    (0.944, 0.443, 0.120),
    (0.977, 0.551, 0.039),
    (0.988, 0.668, 0.058),
    (0.976, 0.790, 0.196),
    (0.949, 0.910, 0.395),
    (0.988, 0.998, 0.645),
)


# --------------------------------------------------------------------------------------------
# Token maps


def _check_attentions(attentions: Sequence[torch.Tensor], num_prefix_tokens: int) -> int:
    """Validate a stack of (B, heads, T, T) attentions; return T."""
    if len(attentions) == 0:
        raise ValueError("no attention layers given")
    shape = tuple(attentions[0].shape)
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError(f"attentions must be (B, heads, T, T), got {shape}")
    for layer in attentions:
        if tuple(layer.shape) != shape:
            raise ValueError(
                f"all layers must share one shape, got {tuple(layer.shape)} != {shape}"
            )
    tokens = shape[-1]
    if not 1 <= num_prefix_tokens < tokens:
        raise ValueError(f"num_prefix_tokens must be in [1, {tokens}), got {num_prefix_tokens}")
    return tokens


def _check_head_fusion(head_fusion: str) -> None:
    if head_fusion not in HEAD_FUSIONS:
        raise ValueError(
            f"unknown head fusion {head_fusion!r}: use one of {', '.join(HEAD_FUSIONS)}"
        )


def _check_discard_ratio(discard_ratio: float) -> None:
    # 1.0 would discard every weight but CLS->CLS, leaving only the identity: nothing to show.
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")


def fuse_heads(attention: torch.Tensor, head_fusion: str = "mean") -> torch.Tensor:
    """(B, heads, T, T) -> (B, T, T) in float32: mean, max or min over heads."""
    _check_head_fusion(head_fusion)
    attention = attention.float()  # bf16 / fp16 products over many layers lose too much
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    return attention.amin(dim=1)


def discard_lowest(attention: torch.Tensor, discard_ratio: float) -> torch.Tensor:
    """Zero the lowest `discard_ratio` fraction of each image's (T, T) weights, except CLS->CLS.

    As in jacobgildenblat/vit-explain: the matrix is flattened and the int(T*T * ratio) smallest
    entries are dropped, but entry 0 (CLS->CLS) is never dropped, so when it is among the smallest
    one entry fewer is discarded. Only that one entry is protected, also with extra prefix tokens.
    """
    _check_discard_ratio(discard_ratio)
    batch, tokens, _ = attention.shape
    count = int(tokens * tokens * discard_ratio)
    if count == 0:
        return attention
    flat = attention.reshape(batch, tokens * tokens)  # (B, T, T) -> (B, T*T)
    _, lowest = flat.topk(count, dim=-1, largest=False)
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    drop[:, 0] = False  # CLS->CLS
    return flat.masked_fill(drop, 0.0).reshape(batch, tokens, tokens)  # (B, T*T) -> (B, T, T)


def _max_normalize(token_map: torch.Tensor) -> torch.Tensor:
    """Scale each row so its max is 1; a row with nothing positive becomes zeros, not NaN."""
    peak = token_map.amax(dim=-1, keepdim=True)
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return torch.where(peak > 0, token_map / safe, torch.zeros_like(token_map))


def attention_rollout(
    attentions: Sequence[torch.Tensor],
    head_fusion: str = "mean",
    discard_ratio: float = 0.0,
    num_prefix_tokens: int = 1,
) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): (B, T - num_prefix_tokens) float32, max 1.

    Per layer, as jacobgildenblat/vit-explain does it: fuse the heads, optionally discard the
    lowest weights (`discard_lowest`), add the identity for the residual connection, and
    renormalize rows. (vit-explain divides by `a.sum(dim=-1)` without keepdim, which broadcasts
    over columns; rows are normalized here, as the paper intends.) The layers are then chained,
    result = A_L @ ... @ A_1, and the CLS row over the patch tokens is returned, scaled so each
    image's maximum is 1. Computed in float32 whatever the attentions' dtype.
    """
    _check_head_fusion(head_fusion)
    _check_discard_ratio(discard_ratio)
    tokens = _check_attentions(attentions, num_prefix_tokens)
    first = attentions[0]
    eye = torch.eye(tokens, device=first.device, dtype=torch.float32)
    result = eye.expand(first.shape[0], tokens, tokens)
    for attention in attentions:
        fused = discard_lowest(fuse_heads(attention, head_fusion), discard_ratio)
        # The residual stream carries each token forward unchanged alongside its attention.
        mixed = (fused + eye) / 2
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        result = mixed @ result
    return _max_normalize(result[:, 0, num_prefix_tokens:])


def last_layer_attention(
    attentions: Sequence[torch.Tensor], head_fusion: str = "mean", num_prefix_tokens: int = 1
) -> torch.Tensor:
    """The last layer's CLS attention over the patch tokens: (B, T - num_prefix_tokens), max 1."""
    _check_head_fusion(head_fusion)
    _check_attentions(attentions, num_prefix_tokens)
    fused = fuse_heads(attentions[-1], head_fusion)
    return _max_normalize(fused[:, 0, num_prefix_tokens:])


def attention_grid(token_map: torch.Tensor, grid_size: tuple[int, int]) -> np.ndarray:
    """(B, h*w) per-patch values -> (B, h, w) float32 numpy, row-major like the tokens."""
    height, width = grid_size
    if token_map.ndim != 2 or token_map.shape[-1] != height * width:
        raise ValueError(f"token map {tuple(token_map.shape)} does not fit a {height}x{width} grid")
    # (B, h*w) -> (B, h, w)
    grid = token_map.detach().float().reshape(-1, height, width)
    return grid.cpu().numpy()


@dataclass
class AttentionTask:
    """Per image: one (h, w) float32 grid, max 1 (a task for runner.Runner; see runner.py).

    The runner must run the model with output_attentions=True.
    """

    method: str = "rollout"
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    cls_only = False
    kind = "embeddings"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(
                f"unknown attention method {self.method!r}: use one of {', '.join(METHODS)}"
            )
        _check_head_fusion(self.head_fusion)
        _check_discard_ratio(self.discard_ratio)
        if self.method == "last-layer" and self.discard_ratio:
            raise ValueError("discard_ratio applies to rollout only, not to last-layer")

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "command": "attention-map",
            "method": self.method,
            "head-fusion": self.head_fusion,
            "discard-ratio": self.discard_ratio,
        }

    def __call__(self, output: ViTHybridOutput) -> list[np.ndarray]:
        if output.attentions is None:
            raise ValueError("the model returned no attentions: run with output_attentions=True")
        if self.method == "rollout":
            token_map = attention_rollout(output.attentions, self.head_fusion, self.discard_ratio)
        else:
            token_map = last_layer_attention(output.attentions, self.head_fusion)
        return list(attention_grid(token_map, output.grid_size))


def attention_task(
    method: str = "rollout", head_fusion: str = "mean", discard_ratio: float = 0.0
) -> AttentionTask:
    return AttentionTask(method, head_fusion, discard_ratio)


# --------------------------------------------------------------------------------------------
# Pictures


def colormap_lut() -> np.ndarray:
    """(256, 3) uint8 'inferno' lookup table, interpolated from the control points."""
    points = np.asarray(_INFERNO_POINTS, dtype=np.float64)
    positions = np.linspace(0.0, 1.0, len(points))
    levels = np.linspace(0.0, 1.0, 256)
    lut = np.stack([np.interp(levels, positions, points[:, c]) for c in range(3)], axis=1)
    return np.rint(lut * 255).astype(np.uint8)


def _unit_range(grid: np.ndarray) -> np.ndarray:
    """Min/max scale to [0, 1]; a flat grid (no contrast) becomes zeros."""
    grid = np.asarray(grid, dtype=np.float32)
    low, high = float(grid.min()), float(grid.max())
    if not high > low:
        return np.zeros_like(grid)
    return (grid - low) / (high - low)


def heatmap(grid: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """(h, w) grid -> RGB 'inferno' heatmap of `size` (width, height), smoothly upsampled."""
    grid = np.asarray(grid)
    if grid.ndim != 2:
        raise ValueError(f"grid must be (h, w), got shape {grid.shape}")
    # Upsample the values, not the colours: interpolating in colour space would leave the map.
    values = Image.fromarray(_unit_range(grid)).resize(
        (int(size[0]), int(size[1])), resample=Image.Resampling.BICUBIC
    )
    # Bicubic overshoots a little around sharp peaks; clip back into the table's range.
    levels = np.clip(np.asarray(values), 0.0, 1.0)
    indices = np.rint(levels * 255).astype(np.uint8)
    return Image.fromarray(colormap_lut()[indices])


def overlay(
    image: Image.Image,
    grid: np.ndarray,
    alpha: float = 0.5,
    box: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """Blend the grid's heatmap over `image` (already EXIF-oriented) at the image's own size.

    `alpha` is the heatmap's weight: 0 gives the image, 1 the heatmap. `box` (left, top, right,
    bottom), usually `preprocess.crop_box(...)`, is the region the model saw: the heat
    covers exactly that, and the rest of the image is dimmed to OUTSIDE_BOX_BRIGHTNESS of its
    brightness. None: the heat covers the whole image and nothing is dimmed.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    image = to_rgb(image)
    width, height = image.size
    left, top, right, bottom = (0, 0, width, height) if box is None else box
    if not (0 <= left < right <= width and 0 <= top < bottom <= height):
        raise ValueError(f"box {box} is empty or outside the {width}x{height} image")
    pixels = np.asarray(image, dtype=np.float32)
    blended = pixels * OUTSIDE_BOX_BRIGHTNESS if box is not None else pixels.copy()
    heat = np.asarray(heatmap(grid, (right - left, bottom - top)), dtype=np.float32)
    inside = pixels[top:bottom, left:right]
    blended[top:bottom, left:right] = (1.0 - alpha) * inside + alpha * heat
    return Image.fromarray(np.clip(np.rint(blended), 0, 255).astype(np.uint8))


def save_overlay(
    image: Image.Image,
    grid: np.ndarray,
    box: tuple[int, int, int, int] | None,
    target: str | os.PathLike[str],
    alpha: float = 0.5,
) -> None:
    """The overlay of `grid` on `image`, written to the PNG `target` all-or-nothing."""
    picture = overlay(image, grid, alpha, box=box)
    with atomic_write(target, "wb") as handle:
        picture.save(handle, format="PNG")
