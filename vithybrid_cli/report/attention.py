"""Where the model looks, as pictures: heatmaps of attention grids and overlays on the image.

A grid (model/attention_maps.py computes it; the attention task in pipeline/tasks.py runs it per
image) is one value per patch token, laid out on the model's (h, w) token grid. It describes the
model's *input crop*, not the whole photo: preprocessing resizes the image and centre-crops it, so
`preprocess.crop_box` gives the region of the image the grid covers (the runner hands it over with
the decoded image) and `overlay(..., box=...)` puts the heat exactly there.

Everything here is a pure function of arrays / images; nothing prints.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..data.preprocess import to_rgb
from ..files import atomic_write

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
