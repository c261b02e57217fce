"""A linear head of your own labels on top of the model's embeddings: the file and the check.

A `Head` is a multinomial logistic regression fitted (see fitting.py) on standardized pooled
embeddings: ``probabilities = softmax(((x - mean) / std) @ weight.T + bias)``. It is saved as a
safetensors file whose tensors are the parameters and whose string metadata says what it was
fitted on (model weights, pool, input size), so `classify --head` can refuse a head that would
read embeddings from a different space. The task that classifies with a head is
pipeline/tasks.py's HeadTask.

What a head depends on (ModelIdentity, the weights fingerprint) is identity.py's.

Only numpy and safetensors are needed here: `info --head` reads a head without importing torch.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .identity import ModelIdentity

HEAD_FORMAT = "vithybrid-head"
HEAD_FORMAT_VERSION = "1"
TENSORS = ("weight", "bias", "mean", "std")


class HeadError(ValueError):
    """A head file that cannot be read, or a head that does not fit the model; one line."""


@dataclass
class Head:
    """Logistic-regression parameters, their normalization, and what they were fitted on."""

    weight: np.ndarray  # (C, D) float32
    bias: np.ndarray  # (C,) float32
    mean: np.ndarray  # (D,) float32: subtracted from the pooled embedding ...
    std: np.ndarray  # (D,) float32: ... which is then divided by this
    labels: list[str]
    pool: str
    model: str
    revision: str | None
    weights: str
    image_size: tuple[int, int]
    interpolate_pos_encoding: bool
    c: float  # L2 regularization, scikit-learn's convention (larger: weaker)
    validation_accuracy: float | None = None
    examples_per_class: dict[str, int] = field(default_factory=dict)
    created: str = ""  # ISO 8601, UTC

    @property
    def embedding_size(self) -> int:
        return int(self.weight.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def check_compatible(self, identity: ModelIdentity, source: str = "head") -> None:
        """Raise HeadError (one line, saying what differs) unless `identity` yields our inputs."""
        if identity.embedding_size != self.embedding_size:
            raise HeadError(
                f"{source} expects {self.embedding_size}-d embeddings but {identity.model} makes "
                f"{identity.embedding_size}-d ones: refit the head on this model"
            )
        if identity.weights != self.weights:
            raise HeadError(
                f"{source} was fitted on another model ({describe(self.model, self.revision)}, "
                f"weights {self.weights[:12]}), not {describe(identity.model, identity.revision)} "
                f"(weights {identity.weights[:12]}): use --model {self.model} or refit"
            )
        if self.pool == "pooler" and not identity.has_pooler:
            raise HeadError(f"{source} reads the pooler output but {identity.model} has no pooler")
        if tuple(identity.image_size) != tuple(self.image_size):
            width, height = self.image_size
            flag = " --interpolate-pos-encoding" if self.interpolate_pos_encoding else ""
            raise HeadError(
                f"{source} was fitted at image size {width}x{height}, this run uses "
                f"{identity.image_size[0]}x{identity.image_size[1]}: "
                f"pass --image-size {width}x{height}{flag}"
            )

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D) pooled embeddings -> (N, C) float32 class probabilities."""
        standardized = (np.asarray(embeddings, np.float32) - self.mean) / self.std
        logits = standardized @ self.weight.T + self.bias
        logits = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)

    def metadata(self) -> dict[str, str]:
        """The head's description as strings (safetensors metadata; `info --head` shows it)."""
        return {
            "format": HEAD_FORMAT,
            "format_version": HEAD_FORMAT_VERSION,
            "labels": json.dumps(self.labels, ensure_ascii=False),
            "pool": self.pool,
            "embedding_size": str(self.embedding_size),
            "model": self.model,
            "revision": self.revision or "",
            "weights": self.weights,
            "image_size": f"{self.image_size[0]}x{self.image_size[1]}",
            "interpolate_pos_encoding": json.dumps(self.interpolate_pos_encoding),
            "c": repr(float(self.c)),
            "validation_accuracy": (
                "" if self.validation_accuracy is None else repr(float(self.validation_accuracy))
            ),
            "examples_per_class": json.dumps(self.examples_per_class, ensure_ascii=False),
            "created": self.created,
        }


def describe(model: str, revision: str | None) -> str:
    return f"{model}@{revision}" if revision else model


# ---------------------------------------------------------------------------- the file


def save_head(head: Head, path: str | os.PathLike) -> None:
    """Write `head` as safetensors (tensors as they are, so a reload is bit-exact), atomically."""
    from safetensors.numpy import save

    from ..files import atomic_write

    tensors = {name: np.ascontiguousarray(getattr(head, name)) for name in TENSORS}
    data = save(tensors, metadata=head.metadata())
    with atomic_write(os.fspath(path), "wb") as handle:
        handle.write(data)


def load_head(path: str | os.PathLike) -> Head:
    """Read a head file; HeadError (one line) for a missing, foreign, truncated or broken one."""
    from safetensors.numpy import load

    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise HeadError(f"{name}: cannot read head file: {error.strerror or error}") from None
    metadata = _read_metadata(name, data)
    if metadata.get("format") != HEAD_FORMAT:
        raise HeadError(f"{name}: a safetensors file but not a vithybrid head (no head metadata)")
    if metadata.get("format_version") != HEAD_FORMAT_VERSION:
        raise HeadError(
            f"{name}: head format version {metadata.get('format_version')!r} is not supported "
            f"(this vithybrid reads version {HEAD_FORMAT_VERSION})"
        )
    try:
        tensors = load(data)
        return _head_from(tensors, metadata)
    except HeadError as error:
        raise HeadError(f"{name}: {error}") from None
    except Exception as error:  # safetensors' own errors, bad JSON, missing keys
        raise HeadError(f"{name}: corrupt head file ({type(error).__name__}: {error})") from None


def _read_metadata(name: str, data: bytes) -> dict[str, str]:
    """The safetensors header's metadata, telling a truncated file from a foreign one."""
    if len(data) < 8:
        raise HeadError(f"{name}: not a vithybrid head file (too short to be safetensors)")
    (header_size,) = struct.unpack("<Q", data[:8])
    if header_size > 100_000_000:
        raise HeadError(f"{name}: not a vithybrid head file (not safetensors)")
    if 8 + header_size > len(data):
        raise HeadError(f"{name}: truncated head file (header runs past the end)")
    try:
        header = json.loads(data[8 : 8 + header_size])
    except ValueError:
        raise HeadError(f"{name}: not a vithybrid head file (not safetensors)") from None
    if not isinstance(header, dict):
        raise HeadError(f"{name}: not a vithybrid head file (not safetensors)")
    try:
        end = max(
            (
                int(entry["data_offsets"][1])
                for key, entry in header.items()
                if key != "__metadata__"
            ),
            default=0,
        )
    except (KeyError, TypeError, IndexError, ValueError):
        raise HeadError(f"{name}: not a vithybrid head file (not safetensors)") from None
    if 8 + header_size + end > len(data):
        raise HeadError(f"{name}: truncated head file ({len(data)} bytes, tensors need more)")
    return header.get("__metadata__") or {}


def _head_from(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> Head:
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise HeadError(f"tensors missing: {', '.join(missing)}")
    labels = json.loads(metadata["labels"])
    weight = tensors["weight"]
    classes, size = weight.shape
    if len(labels) != classes or tensors["bias"].shape != (classes,):
        raise HeadError(f"{len(labels)} labels for a {classes}-class weight")
    if tensors["mean"].shape != (size,) or tensors["std"].shape != (size,):
        raise HeadError(f"normalization does not match the {size}-d weight")
    width, height = (int(side) for side in metadata["image_size"].split("x"))
    accuracy = metadata.get("validation_accuracy") or None
    return Head(
        weight=weight,
        bias=tensors["bias"],
        mean=tensors["mean"],
        std=tensors["std"],
        labels=[str(label) for label in labels],
        pool=metadata["pool"],
        model=metadata["model"],
        revision=metadata.get("revision") or None,
        weights=metadata["weights"],
        image_size=(width, height),
        interpolate_pos_encoding=json.loads(metadata["interpolate_pos_encoding"]),
        c=float(metadata["c"]),
        validation_accuracy=None if accuracy is None else float(accuracy),
        examples_per_class=json.loads(metadata.get("examples_per_class") or "{}"),
        created=metadata.get("created", ""),
    )
