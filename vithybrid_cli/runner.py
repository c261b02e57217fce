"""Batching, decode workers, device/dtype and process sharding: inputs in, per-image results out.

The runner knows tensors and the model, not files or formats: it takes the stream that
`inputs.iter_inputs` yields and yields one `Result` per input, in input order. Decoding and
preprocessing run in a thread pool (Pillow releases the GIL) a bounded number of images ahead of
the model, so the two overlap and memory stays flat however many inputs there are.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .inputs import InputError, InputItem
from .preprocess import ImageError, load_and_preprocess

if TYPE_CHECKING:
    import torch

    from .model import ViTHybrid, ViTHybridOutput

logger = logging.getLogger(__name__)

POOLS = ("cls", "mean", "pooler")


@dataclass
class Result:
    """One input's outcome: `error` set, or the payload the task computed."""

    index: int  # position in the input stream (global, across shards)
    path: str
    error: str | None = None
    payload: Any = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class RunOptions:
    batch_size: int | None = None  # None: chosen from device and image size
    workers: int | None = None  # decode threads; None: one per core, at least 2
    image_size: tuple[int, int] | None = None  # (width, height); None: the checkpoint's
    interpolate_pos_encoding: bool = False
    fast_decode: bool = True  # JPEG draft-mode decoding of photos far larger than needed
    output_attentions: bool = False
    shard: tuple[int, int] = (0, 1)  # (rank, world size)
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------- batching and sharding
def auto_batch_size(device: torch.device, image_size: tuple[int, int]) -> int:
    """Enough images to keep the matrix units busy, scaled down for large inputs."""
    pixels = image_size[0] * image_size[1]
    base = 32 if device.type == "cuda" else 8
    return max(1, min(base, int(base * 384 * 384 / pixels)))


def enumerate_shard(items: Iterable[Any], rank: int, world: int) -> Iterator[tuple[int, Any]]:
    """(global index, item) for this rank's share: every world-th input, streaming."""
    for index, item in enumerate(items):
        if index % world == rank:
            yield index, item


def shard_size(total: int | None, rank: int, world: int) -> int | None:
    """How many of `total` inputs rank `rank` of `world` gets from enumerate_shard."""
    return None if total is None else len(range(rank, total, world))


# ---------------------------------------------------------------------------- tasks

# A task turns one forward pass into per-image payloads. One that reads only the CLS token
# (logits, pooler, CLS embedding) says so with a `cls_only = True` attribute, and the runner lets
# the model skip the rest of the last block (ViTHybrid.forward's cls_only).
Task = Callable[["ViTHybridOutput"], list[Any]]


def classify_task(top_k: int, id2label: dict[int, str]) -> Task:
    """Per image: [(class index, label, probability), ...] best first."""
    import torch

    def task(output: ViTHybridOutput) -> list[Any]:
        if output.logits is None:
            raise ValueError("this checkpoint has no classifier head; use `embed` instead")
        probabilities = output.logits.float().softmax(dim=-1)
        k = min(top_k, probabilities.shape[-1])
        scores, indices = torch.topk(probabilities, k, dim=-1)
        return [
            [
                (int(i), id2label.get(int(i), f"LABEL_{int(i)}"), float(s))
                for s, i in zip(row_scores.tolist(), row_indices.tolist(), strict=True)
            ]
            for row_scores, row_indices in zip(scores, indices, strict=True)
        ]

    task.cls_only = True
    return task


def embed_task(pool: str = "cls", normalize: bool = False, tokens: bool = False) -> Task:
    """Per image: a float32 vector (hidden,) or, with `tokens`, every token (T, hidden)."""
    import torch

    if pool not in POOLS:
        raise ValueError(f"unknown pool {pool!r}: use one of {', '.join(POOLS)}")

    def task(output: ViTHybridOutput) -> list[Any]:
        if tokens:
            vectors = output.last_hidden_state
        elif pool == "cls":
            vectors = output.cls_embedding
        elif pool == "mean":
            vectors = output.patch_tokens.mean(dim=1)
        else:
            if output.pooler_output is None:
                raise ValueError("this checkpoint has no pooler layer; use --pool cls or mean")
            vectors = output.pooler_output
        vectors = vectors.float()
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
        return list(vectors.cpu().numpy())

    task.cls_only = not tokens and pool != "mean"
    return task


# ---------------------------------------------------------------------------- the runner


class Runner:
    """Runs a loaded model over a stream of inputs; see the module docstring."""

    def __init__(self, model: ViTHybrid, options: RunOptions | None = None) -> None:
        import torch

        self.model = model
        self.options = options or RunOptions()
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.channels_last = (
            model.backbone.stem.conv.weight.is_contiguous(memory_format=torch.channels_last)
            and parameter.dtype != torch.float32
        )
        self.preprocess_config = model.preprocess_config
        if self.options.image_size and not self.options.interpolate_pos_encoding:
            side = model.config.image_size
            if tuple(self.options.image_size) != (side, side):
                raise ValueError(
                    f"image size {self.options.image_size[0]}x{self.options.image_size[1]} differs "
                    f"from the checkpoint's {side}x{side}: add --interpolate-pos-encoding"
                )
        width, height = self.input_size
        if width % model.config.stride or height % model.config.stride:
            logger.info(
                "input %dx%d is not a multiple of %d: the backbone pads it (TF SAME)",
                width,
                height,
                model.config.stride,
            )
        self.batch_size = self.options.batch_size or auto_batch_size(self.device, self.input_size)
        self.workers = self.options.workers or max(2, os.cpu_count() or 1)

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the tensors the model sees."""
        if self.options.image_size:
            return tuple(self.options.image_size)
        from .preprocess import target_size

        return target_size(self.preprocess_config)

    def run(self, items: Iterable[InputItem | InputError], task: Task) -> Iterator[Result]:
        """One Result per input of this process's shard, in input order."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vithybrid-decode")
        try:
            yield from self._run(pool, items, task)
        except BaseException:
            # Interrupted (Ctrl-C) or abandoned (--strict): drop the queued decodes and do not
            # wait here for one stuck on a slow file; the results so far are already out.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()

    def _run(
        self, pool: ThreadPoolExecutor, items: Iterable[InputItem | InputError], task: Task
    ) -> Iterator[Result]:
        rank, world = self.options.shard
        pending: list[tuple[int, str, Future | str]] = []  # (index, path, future or error)
        queue: deque[tuple[int, str, Future | str]] = deque()
        ahead = self.batch_size * 2 + self.workers  # decoded images waiting, at most
        stream = enumerate_shard(items, rank, world)
        exhausted = False
        while True:
            while not exhausted and len(queue) < ahead:
                try:
                    index, item = next(stream)
                except StopIteration:
                    exhausted = True
                    break
                queue.append(self._submit(pool, index, item))
            if not queue:
                break
            pending.append(queue.popleft())
            ready = sum(1 for entry in pending if not isinstance(entry[2], str))
            if ready >= self.batch_size or (exhausted and not queue):
                yield from self._run_batch(pending, task)
                pending = []
        if pending:
            yield from self._run_batch(pending, task)

    def _submit(
        self, pool: ThreadPoolExecutor, index: int, item: InputItem | InputError
    ) -> tuple[int, str, Future | str]:
        if isinstance(item, InputError):
            return index, item.path, item.message
        future = pool.submit(
            load_and_preprocess,
            item,
            self.preprocess_config,
            self.options.image_size,
            fast_decode=self.options.fast_decode,
        )
        return index, item.path, future

    def _run_batch(
        self, entries: list[tuple[int, str, Future | str]], task: Task
    ) -> Iterator[Result]:
        arrays, slots, results = [], [], []
        for index, path, work in entries:
            result = Result(index=index, path=path)
            if isinstance(work, str):
                result.error = work
            else:
                try:
                    arrays.append(work.result())
                    slots.append(result)
                except ImageError as error:
                    result.error = error.message
                except Exception as error:  # a decoder bug must not take the batch down
                    logger.debug("unexpected failure decoding %s", path, exc_info=True)
                    result.error = f"cannot decode: {type(error).__name__}: {error}"
            results.append(result)
        if arrays:
            for result, payload in zip(slots, self.forward(np.stack(arrays), task), strict=True):
                result.payload = payload
        yield from results

    def forward(self, batch: np.ndarray, task: Task) -> list[Any]:
        """Model + task on a (B, 3, H, W) float32 array; the one place tensors cross devices."""
        import torch

        pixels = torch.from_numpy(batch)
        if self.device.type == "cuda":
            pixels = pixels.pin_memory().to(self.device, non_blocking=True)
        # one copy: dtype and layout together
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        pixels = pixels.to(self.dtype, memory_format=layout)
        output_attentions = self.options.output_attentions
        with torch.inference_mode():
            output = self.model(
                pixels,
                interpolate_pos_encoding=self.options.interpolate_pos_encoding,
                output_attentions=output_attentions,
                cls_only=getattr(task, "cls_only", False) and not output_attentions,
            )
            return task(output)
