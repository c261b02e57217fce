"""The tasks: what one forward pass becomes for each image of the batch.

A task turns one forward pass into per-image payloads. It is any object with

    cls_only: bool            True when it reads only the CLS token (logits, pooler, CLS
                              embedding): the model then skips the rest of the last block
    kind: str                 "records" (JSON-able payloads, e.g. classify's top-k) or
                              "embeddings" (one float32 array per image)
    settings: dict            what shapes its payloads, by option name ({"top-k": 5}); the
                              journal records it and a --resume with other values is refused
    __call__(output) -> list  one payload per image of the batch, from a ViTHybridOutput

`classify_task`, `embed_task`, `head_task` (a fitted head's labels) and `attention_task` (where
the model looks; the maths is model/attention_maps.py) build the ones here; `FunctionTask(f)`
makes one of any function. A new task is a small dataclass with these four members; the CLI and
the API then run it with `job.run_job` like the others (the runner, runner.py, calls it per batch).

What the CLI, the API and the Ray step share about building them is here too: `labeling_task`
(classify's task: the checkpoint's classifier, or a head checked against the run) and
`check_pool` (can this model pool that way), so each says the same thing in the same words.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..model.head import TENSORS, Head

if TYPE_CHECKING:
    from ..model.model import ViTHybrid, ViTHybridOutput
    from .backends.openvino import OpenVINOModel
    from .runner import RunOptions

POOLS = ("cls", "mean", "pooler")


# ---------------------------------------------------------------------------- the protocol


class Task(Protocol):
    cls_only: bool
    kind: str
    settings: dict[str, Any]

    def __call__(self, output: ViTHybridOutput) -> list[Any]: ...


def label_of(id2label: dict[int, str], index: int) -> str:
    return id2label.get(index, f"LABEL_{index}")


def decide(predictions: list[tuple[int, str, float]], min_score: float | None) -> dict[str, Any]:
    """A classify payload with its decision on top: the best "label" and its "score", the label
    None (abstain) when the score is below `min_score`; "top_k" as usual below them."""
    _, label, score = predictions[0]
    return {
        "label": None if min_score is not None and score < min_score else label,
        "score": score,
        "top_k": [{"index": i, "label": name, "score": s} for i, name, s in predictions],
    }


@dataclass
class ClassifyTask:
    """Per image: [(class index, label, probability), ...] best first; with `min_score`, that
    list under a decision (see `decide`)."""

    top_k: int
    id2label: dict[int, str] = field(default_factory=dict)
    min_score: float | None = None
    cls_only = True
    kind = "records"

    @property
    def settings(self) -> dict[str, Any]:
        return {"command": "classify", "top-k": self.top_k, "min-score": self.min_score}

    def __call__(self, output: ViTHybridOutput) -> list[Any]:
        import torch

        if output.logits is None:
            raise ValueError("this checkpoint has no classifier head; use `embed` instead")
        probabilities = output.logits.float().softmax(dim=-1)
        scores, indices = torch.topk(probabilities, min(self.top_k, probabilities.shape[-1]))
        payloads = [
            [
                (i, label_of(self.id2label, i), s)
                for s, i in zip(row_scores, row_indices, strict=True)
            ]
            for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True)
        ]
        if self.min_score is None:
            return payloads
        return [decide(predictions, self.min_score) for predictions in payloads]


@dataclass
class EmbedTask:
    """Per image: a float32 vector (hidden,) or, with `tokens`, every token (T, hidden)."""

    pool: str = "cls"
    normalize: bool = False
    tokens: bool = False
    kind = "embeddings"

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}: use one of {', '.join(POOLS)}")

    @property
    def cls_only(self) -> bool:
        return not self.tokens and self.pool != "mean"

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "command": "embed",
            "pool": self.pool,
            "normalize": self.normalize,
            "tokens": self.tokens,
        }

    def __call__(self, output: ViTHybridOutput) -> list[Any]:
        import torch

        if self.tokens:
            vectors = output.last_hidden_state
        elif self.pool == "cls":
            vectors = output.cls_embedding
        elif self.pool == "mean":
            vectors = output.patch_tokens.mean(dim=1)
        else:
            if output.pooler_output is None:
                raise ValueError("this checkpoint has no pooler layer; use --pool cls or mean")
            vectors = output.pooler_output
        vectors = vectors.float()
        if self.normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return list(vectors.cpu().numpy())


@dataclass
class FunctionTask:
    """Any function of a ViTHybridOutput as a task (tests, benchmarks, one-off uses)."""

    function: Callable[[ViTHybridOutput], list[Any]]
    cls_only: bool = False
    kind: str = "records"
    settings: dict[str, Any] = field(default_factory=dict)

    def __call__(self, output: ViTHybridOutput) -> list[Any]:
        return self.function(output)


def classify_task(
    top_k: int, id2label: dict[int, str], min_score: float | None = None
) -> ClassifyTask:
    return ClassifyTask(top_k, id2label, min_score)


def embed_task(pool: str = "cls", normalize: bool = False, tokens: bool = False) -> EmbedTask:
    return EmbedTask(pool, normalize, tokens)


def check_pool(model: ViTHybrid | OpenVINOModel, pool: str) -> None:
    """Raise ValueError (one line) unless `model` can make `pool` embeddings: an unknown pool, or
    "pooler" of a checkpoint without a pooler layer. The CLI, the API, the Ray step and fitting
    ask this before any work, each turning it into its own error."""
    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}: use one of {', '.join(POOLS)}")
    if pool == "pooler" and model.pooler is None:
        name = model.checkpoint.name if model.checkpoint is not None else "this checkpoint"
        raise ValueError(f"{name} has no pooler layer: use --pool cls or --pool mean")


# ---------------------------------------------------------------------------- a fitted head


@dataclass
class HeadTask:
    """classify over a head's labels: per image the decision (see decide: the best label,
    None below `min_score`, and its score) above the top-k list, from the pooled embedding (the
    same pooling as embed_task) through the head; one forward pass per image."""

    head: Head
    top_k: int = 5
    min_score: float | None = None
    kind = "records"

    def __post_init__(self) -> None:
        self.pooled = embed_task(self.head.pool, normalize=False)

    @property
    def cls_only(self) -> bool:
        return self.pooled.cls_only

    @property
    def settings(self) -> dict[str, Any]:
        """What shapes a record; a resume with another head file is refused."""
        return {
            "command": "classify",
            "top-k": self.top_k,
            "min-score": self.min_score,
            "head": head_fingerprint(self.head),
        }

    def __call__(self, output: ViTHybridOutput) -> list[Any]:
        probabilities = self.head.probabilities(np.stack(self.pooled(output)))
        k = min(self.top_k, self.head.num_classes)
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            decide([(int(i), self.head.labels[i], float(row[i])) for i in ranks], self.min_score)
            for row, ranks in zip(probabilities, order, strict=True)
        ]


def head_task(head: Head, top_k: int = 5, min_score: float | None = None) -> HeadTask:
    return HeadTask(head, top_k, min_score)


def labeling_task(
    model: ViTHybrid | OpenVINOModel,
    options: RunOptions,
    top_k: int,
    head: Head | None = None,
    min_score: float | None = None,
    head_source: str = "head",
) -> ClassifyTask | HeadTask:
    """classify's task, for the CLI, the API and the Ray step alike: the checkpoint's classifier
    (FeaturesOnlyError for a checkpoint without one), or `head` checked against this run
    (`options`: its image size and interpolation; HeadError naming `head_source` when the head
    reads another model's embeddings)."""
    from ..model.identity import model_identity
    from ..model.weights import require_classifier

    if head is None:
        require_classifier(model)  # features-only checkpoints: a one-line hint
        return classify_task(top_k, model.config.id2label, min_score)
    head.check_compatible(model_identity(model, options), source=head_source)
    return head_task(head, top_k, min_score)


def head_fingerprint(head: Head) -> str:
    """A short hash of a head's parameters and labels (not of when it was made)."""
    digest = hashlib.sha256(json.dumps(head.labels).encode())
    for name in TENSORS:
        digest.update(np.ascontiguousarray(getattr(head, name), dtype=np.float32).tobytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------- attention


@dataclass
class AttentionTask:
    """Per image: one (h, w) float32 grid, max 1 (see model/attention_maps.py).

    The runner must run the model with output_attentions=True.
    """

    method: str = "rollout"
    head_fusion: str = "mean"
    discard_ratio: float = 0.0
    cls_only = False
    kind = "embeddings"

    def __post_init__(self) -> None:
        from ..model.attention_maps import METHODS, check_discard_ratio, check_head_fusion

        if self.method not in METHODS:
            raise ValueError(
                f"unknown attention method {self.method!r}: use one of {', '.join(METHODS)}"
            )
        check_head_fusion(self.head_fusion)
        check_discard_ratio(self.discard_ratio)
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
        from ..model.attention_maps import attention_grid, attention_rollout, last_layer_attention

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
