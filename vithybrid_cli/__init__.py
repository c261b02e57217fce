"""vithybrid: Google's ViT-Hybrid (BiT + ViT-B/16) image classifier in plain PyTorch.

    >>> import vithybrid_cli as vh
    >>> model = vh.load_model()                      # google/vit-hybrid-base-bit-384
    >>> vh.classify(model, ["cat.jpg"], top_k=3)     # [[(281, 'tabby, tabby cat', 0.71), ...]]
    >>> vh.embed(model, ["cat.jpg", "dog.jpg"]).shape  # (2, 768)
    >>> report = vh.fit_head(model, "photos/")       # one subfolder per label
    >>> vh.classify(model, ["new.jpg"], head=report.head)  # [[(0, 'receipt', 0.93), ...]]

torch is imported on first use, not at package import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__  # re-exported
from .model.config import DEFAULT_MODEL_ID, PreprocessConfig, ViTHybridConfig

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .model.head import Head
    from .model.model import ViTHybrid
    from .pipeline.backends.openvino import OpenVINOModel
    from .pipeline.fit import FitReport

__all__ = [
    "DEFAULT_MODEL_ID",
    "PreprocessConfig",
    "ViTHybridConfig",
    "classify",
    "embed",
    "fit_head",
    "load_head",
    "load_model",
    "save_head",
    "preprocess_images",
]


def load_model(
    name_or_path: str | os.PathLike = DEFAULT_MODEL_ID,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str | torch.dtype | None = None,
    backend: str = "torch",
) -> ViTHybrid | OpenVINOModel:
    """Load a checkpoint (hub id, directory or weights file) ready for inference.

    The model has `.config`, `.preprocess_config` and `.checkpoint`; call it on pixel batches as
    `model(pixels, output_attentions=..., interpolate_pos_encoding=...)`.

    `backend="openvino"` (needs `pip install "vithybrid[openvino]"`): the same model converted
    once (cached under ~/.cache/vithybrid/openvino, or $VITHYBRID_CACHE) and run by OpenVINO on
    the CPU, faster there; `dtype` None or "auto" is OpenVINO's default precision (bf16 where
    the CPU has it). It is called the same way and works with classify, embed and fit_head.
    """
    from .pipeline.backends import load_run_model

    if backend != "torch":
        dtype = dtype or "auto"  # None: OpenVINO's default precision
    return load_run_model(name_or_path, revision, device=device, dtype=dtype, backend=backend)


def preprocess_images(
    images: Sequence[Any], config: PreprocessConfig, image_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Paths or PIL images -> a (B, 3, H, W) float32 tensor, as the checkpoint's preprocessor.

    (Not named `preprocess`: that is the submodule's name, and importing it rebinds the attribute.)
    """
    import numpy as np
    import torch

    from .data.preprocess import load_and_preprocess, preprocess_image, to_rgb

    arrays = [
        preprocess_image(to_rgb(image), config, image_size)
        if hasattr(image, "mode")
        else load_and_preprocess(image, config, image_size, fast_decode=False)
        for image in images
    ]
    return torch.from_numpy(np.stack(arrays))


def run(model: ViTHybrid, images: Sequence[Any], task: Any, **options: Any) -> list[Any]:
    """The task's payload per image, through the CLI's Runner (batches, decode threads, draft
    decoding); an image that cannot be read raises ImageError naming it."""
    from .data.items import InputItem
    from .data.preprocess import ImageError
    from .pipeline.job import CollectOutput, run_job
    from .pipeline.runner import Runner, RunOptions

    runner = Runner(model, RunOptions(**options))
    items = [image if hasattr(image, "mode") else InputItem(os.fspath(image)) for image in images]
    collected = CollectOutput()
    if run_job(runner, lambda: items, task, collected).interrupted:
        raise KeyboardInterrupt
    for result in collected.results:
        if not result.ok:
            raise ImageError(result.path, result.error)
    return [result.payload for result in collected.results]


def classify(
    model: ViTHybrid,
    images: Sequence[Any],
    top_k: int = 5,
    image_size: tuple[int, int] | None = None,
    interpolate_pos_encoding: bool = False,
    batch_size: int | None = None,
    head: Head | str | os.PathLike | None = None,
) -> list[list[tuple[int, str, float]]]:
    """Top-k (class index, label, probability) per image, best first.

    With `head` (a Head or a head file from fit_head/`vithybrid fit`), over the head's labels.
    Before any image is read: FeaturesOnlyError without a head on a checkpoint that has no
    classifier, HeadError for a head fitted on other weights or at another image size.
    """
    from .pipeline.runner import RunOptions
    from .pipeline.tasks import labeling_task

    head = load_head(head) if isinstance(head, str | os.PathLike) else head
    options = RunOptions(image_size=image_size, interpolate_pos_encoding=interpolate_pos_encoding)
    task = labeling_task(model, options, top_k, head)
    payloads = run(model, images, task, image_size=image_size, batch_size=batch_size,
                   interpolate_pos_encoding=interpolate_pos_encoding)  # fmt: skip
    if head is None:
        return payloads
    # a head's payload is its decision over the top-k list: hand back the list, as without one
    return [[(e["index"], e["label"], e["score"]) for e in p["top_k"]] for p in payloads]


def embed(
    model: ViTHybrid,
    images: Sequence[Any],
    pool: str = "cls",
    normalize: bool = False,
    image_size: tuple[int, int] | None = None,
    interpolate_pos_encoding: bool = False,
    batch_size: int | None = None,
) -> np.ndarray:
    """(N, hidden) float32 embeddings: `cls` (pre-logits), `mean` of patch tokens, or `pooler`."""
    import numpy as np

    from .pipeline.tasks import check_pool, embed_task

    check_pool(model, pool)
    task = embed_task(pool, normalize)
    rows = run(model, images, task, image_size=image_size, batch_size=batch_size,
               interpolate_pos_encoding=interpolate_pos_encoding)  # fmt: skip
    return np.stack(rows) if rows else np.zeros((0, model.config.hidden_size), np.float32)


def fit_head(model: ViTHybrid, data: str | os.PathLike | None = None, **options: Any) -> FitReport:
    """Fit a head of your own labels; returns a FitReport (`.head`, validation metrics).

    See fit.fit_head for the options (labels_from, val, val_fraction, c, pool, cache_dir...).
    Save the head with save_head(report.head, "head.safetensors").
    """
    from .pipeline.fit import fit_head as fit

    return fit(model, data, **options)


def load_head(path: str | os.PathLike) -> Head:
    """Read a head file; raises head.HeadError (a ValueError) with one line when it is unusable."""
    from .model.head import load_head as load

    return load(path)


def save_head(head: Head, path: str | os.PathLike) -> None:
    """Write a head as safetensors (bit-exact round trip through load_head)."""
    from .model.head import save_head as save

    save(head, path)
