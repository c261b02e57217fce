"""Which model makes the numbers: two hashes of the weights, and what a head depends on.

There are two hashes because they answer two questions:

- `weights_identity` hashes the weights FILES (each file's size and its first, middle and last
  MiB). It needs no loaded model and reads a few MiB, and it is what every journal has recorded
  as its "weights" setting, so a --resume checks it against journals written before.
- `weights_fingerprint` hashes the loaded VALUES of tensors every fine-tune changes, rounded to
  bfloat16, plus the preprocessing. The same checkpoint copied elsewhere (hub cache, a folder,
  another file layout) or loaded at another --dtype gives the same fingerprint, so heads
  (`ModelIdentity.weights`) and the OpenVINO conversion cache are keyed by it.

`model_identity` is a loaded model's ModelIdentity for a run's image size and position-encoding
interpolation, the fingerprint computed once per loaded model.
"""

from __future__ import annotations

import hashlib
import json
import os
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from .config import target_size

if TYPE_CHECKING:
    from .model import ViTHybrid


class RunSizing(Protocol):
    """What model_identity reads of a run's options (pipeline.runner.RunOptions has both)."""

    @property
    def image_size(self) -> tuple[int, int] | None: ...

    @property
    def interpolate_pos_encoding(self) -> bool: ...


@dataclass(frozen=True)
class ModelIdentity:
    """What a head depends on: which weights make the embeddings, how they are pooled and sized."""

    model: str  # hub id or path, as given (for messages; `weights` decides)
    revision: str | None
    weights: str  # fingerprint of the weights and preprocessing (weights_fingerprint)
    embedding_size: int
    image_size: tuple[int, int]  # (width, height) the model sees
    interpolate_pos_encoding: bool
    has_pooler: bool = False


def weights_identity(files: list[str], sample: int = 1 << 20) -> str:
    """A short hash of each weights file's size and its first, middle and last MiB: tells two
    checkpoints apart (same architecture, other values) without reading gigabytes."""
    digest = hashlib.sha256()
    for path in files:
        size = os.path.getsize(path)
        digest.update(str(size).encode())
        with open(path, "rb") as file:
            for offset in (0, max(0, size // 2 - sample // 2), max(0, size - sample)):
                file.seek(offset)
                digest.update(file.read(sample))
    return digest.hexdigest()[:16]


def weights_fingerprint(model: ViTHybrid) -> str:
    """A hash of tensors every fine-tune changes, plus the preprocessing: which embedding space.

    Computed from the loaded values rounded to bfloat16, so the same checkpoint gives the same
    fingerprint wherever it lives (hub cache, a copied folder) and at any --dtype.
    """
    import dataclasses

    import torch

    digest = hashlib.sha256()
    parameters = dict(model.named_parameters())
    for name in ("embeddings.cls_token", "embeddings.position_embeddings", "norm.weight"):
        tensor = parameters[name].detach().to("cpu", torch.bfloat16).contiguous()
        digest.update(name.encode())
        digest.update(tensor.view(torch.int16).numpy().tobytes())
    config = dataclasses.asdict(model.preprocess_config)
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    return digest.hexdigest()


FINGERPRINTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # one hash per loaded model


def model_identity(model: ViTHybrid, options: RunSizing) -> ModelIdentity:
    """The identity of `model` run with `options` (image size, position-encoding interpolation)."""
    checkpoint = model.checkpoint
    revision = checkpoint.revision
    if revision is None and checkpoint.from_hub and checkpoint.directory is not None:
        revision = checkpoint.directory.name  # the snapshot's commit
    fingerprint = FINGERPRINTS.get(model)
    if fingerprint is None:
        fingerprint = FINGERPRINTS[model] = weights_fingerprint(model)
    size = options.image_size or target_size(model.preprocess_config)
    return ModelIdentity(
        model=checkpoint.name,
        revision=revision,
        weights=fingerprint,
        embedding_size=model.config.hidden_size,
        image_size=(int(size[0]), int(size[1])),
        interpolate_pos_encoding=options.interpolate_pos_encoding,
        has_pooler=model.pooler is not None,
    )
