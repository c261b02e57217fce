"""Batching and decode workers: inputs in, one result per input out.

The runner knows tensors and the model, not files or formats: it takes (index, input) pairs and
yields one `Result` per input, in input order. Decoding and preprocessing run in a thread pool
(Pillow releases the GIL) a bounded number of images ahead of the model, so the two overlap and
memory stays flat however many inputs there are. Each batch goes through the model and then a
task (tasks.py), which turns the forward pass into one payload per image.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.items import InputError, InputItem
from ..data.preprocess import (
    ImageError,
    crop_box,
    decode_min_size,
    load_image,
    preprocess_image,
    to_rgb,
)

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from ..model.model import ViTHybrid
    from .backends.openvino import OpenVINOModel
    from .tasks import Task

logger = logging.getLogger(__name__)

WAKE_S = 0.2  # the longest the main thread waits on a decode without looking for Ctrl-C


@dataclass
class Result:
    """One input's outcome: `error` set, or the payload the task computed."""

    index: int  # position in the input stream
    path: str
    error: str | None = None
    payload: Any = None
    image: Image.Image | None = None  # with RunOptions.keep_images: what the model saw, decoded
    crop_box: tuple[int, int, int, int] | None = None  # ... and the part of it the input covers

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
    keep_images: bool = False  # results carry their decoded image (attention overlays)


def auto_batch_size(device: torch.device, image_size: tuple[int, int]) -> int:
    """Enough images to keep the matrix units busy, scaled down for large inputs."""
    pixels = image_size[0] * image_size[1]
    base = 32 if device.type == "cuda" else 8
    return max(1, min(base, int(base * 384 * 384 / pixels)))


# ---------------------------------------------------------------------------- the runner

Work = tuple[int, str, "Future | str"]  # (index, path, decode in flight or an error message)


class Runner:
    """Runs a loaded model over a stream of inputs; see the module docstring."""

    def __init__(self, model: ViTHybrid | OpenVINOModel, options: RunOptions | None = None) -> None:
        from .backends import input_placement

        self.model = model
        self.options = options or RunOptions()
        self.device, self.dtype = input_placement(model)  # where and how the pixels go
        self.memory_format = model.memory_format
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
        self.batch_size = self.batch_size_that_fits()

    def batch_size_that_fits(self) -> int:
        """The batch size, checked against the memory there is (runtime.batch_memory_bytes):
        an automatic one lowered to fit. ValueError, naming what fits, for an image size that
        does not fit one image or a batch size given that does not fit."""
        from .backends import compute_dtype
        from .runtime import GIB, available_memory, batch_memory_bytes, largest_side

        available = available_memory(self.device)  # the weights are loaded: not counted again
        if available is None:
            return self.batch_size
        config, (width, height) = self.model.config, self.input_size
        itemsize = compute_dtype(self.model).itemsize

        def need(batch: int, size: tuple[int, int] = (width, height)) -> int:
            return batch_memory_bytes(
                config, size, batch, itemsize, queued=2 * batch + self.workers,
                attention_maps=self.options.output_attentions,
            )  # fmt: skip

        there = f"{available / GIB:.1f} GB is available"
        if need(1) > available:
            side = largest_side(
                lambda s: need(1, (s, s)) <= available, config.stride, max(width, height)
            )
            fits = f"at most --image-size {side}x{side} fits" if side else "no image size fits"
            raise ValueError(
                f"image size {width}x{height} needs about {need(1) / GIB:.1f} GB for one image and "
                f"{there}: {fits}"
            )
        fits = 1 + (available - need(1)) // (need(2) - need(1))
        if self.batch_size <= fits:
            return self.batch_size
        if self.options.batch_size:
            raise ValueError(
                f"--batch-size {self.batch_size} at {width}x{height} needs about "
                f"{need(self.batch_size) / GIB:.1f} GB and {there}: --batch-size {fits} fits"
            )
        logger.info("batch size %d lowered to %d to fit in memory", self.batch_size, fits)
        return fits

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the tensors the model sees."""
        if self.options.image_size:
            return tuple(self.options.image_size)
        from ..model.config import target_size

        return target_size(self.preprocess_config)

    @property
    def settings(self) -> dict[str, Any]:
        """What shapes every payload, beside the model and the task (see journal.py)."""
        from PIL import Image

        from .backends import backend_settings

        return {
            **backend_settings(self.model),
            "image-size": list(self.input_size),
            "interpolation": Image.Resampling(self.preprocess_config.resample).name.lower(),
            "interpolate-pos-encoding": self.options.interpolate_pos_encoding,
        }

    def run(self, items: Iterable[Any], task: Task) -> Iterator[Result]:
        """One Result per item (InputItem, InputError or PIL image), in order."""
        return self.run_indexed(enumerate(items), task)

    def run_indexed(self, pairs: Iterable[tuple[int, Any]], task: Task) -> Iterator[Result]:
        """One Result per (index, item) pair, in order."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="vithybrid-decode")
        try:
            yield from self._run(pool, iter(pairs), task)
        except BaseException:
            # Interrupted (Ctrl-C) or abandoned (--strict): drop the queued decodes and do not
            # wait here for one stuck on a slow file; the results so far are already out.
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()

    def _run(self, pool: ThreadPoolExecutor, pairs: Iterator, task: Task) -> Iterator[Result]:
        pending: list[Work] = []
        queue: deque[Work] = deque()
        ahead = self.batch_size * 2 + self.workers  # decoded images waiting, at most
        exhausted = False
        while True:
            while not exhausted and len(queue) < ahead:
                pair = next(pairs, None)
                if pair is None:
                    exhausted = True
                    break
                queue.append(self._submit(pool, *pair))
            if not queue:
                break
            pending.append(queue.popleft())
            ready = sum(1 for entry in pending if not isinstance(entry[2], str))
            if ready >= self.batch_size or (exhausted and not queue):
                yield from self._run_batch(pending, task)
                pending = []
        if pending:
            yield from self._run_batch(pending, task)

    def _submit(self, pool: ThreadPoolExecutor, index: int, item: Any) -> Work:
        if isinstance(item, InputError):
            return index, item.path, item.message
        if isinstance(item, InputItem):
            return index, item.path, pool.submit(self.decode, item)
        return index, f"<image {index}>", pool.submit(self.prepare, to_rgb(item))  # a PIL image

    def decode(self, item: InputItem) -> tuple[np.ndarray, Any, Any]:
        """(model input, decoded image or None, crop box or None) of one input; in a worker."""
        fast = self.options.fast_decode and not self.options.keep_images
        min_size = decode_min_size(self.preprocess_config, self.options.image_size)
        return self.prepare(load_image(item, min_size=min_size if fast else None))

    def prepare(self, image: Image.Image) -> tuple[np.ndarray, Any, Any]:
        pixels = preprocess_image(image, self.preprocess_config, self.options.image_size)
        if not self.options.keep_images:
            return pixels, None, None
        box = crop_box(image.size, self.preprocess_config, self.options.image_size)
        return pixels, image, box

    def _run_batch(self, entries: list[Work], task: Task) -> Iterator[Result]:
        arrays, slots, results = [], [], []
        for index, path, work in entries:
            result = Result(index=index, path=path)
            if isinstance(work, str):
                result.error = work
            else:
                try:
                    pixels, result.image, result.crop_box = wait(work)
                    arrays.append(pixels)
                    slots.append(result)
                except Exception as error:
                    result.error = decode_failure(path, error)
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
        pixels = pixels.to(self.dtype, memory_format=self.memory_format)
        output_attentions = self.options.output_attentions
        with torch.inference_mode():
            output = self.model(
                pixels,
                interpolate_pos_encoding=self.options.interpolate_pos_encoding,
                output_attentions=output_attentions,
                cls_only=task.cls_only and not output_attentions,
            )
            return task(output)


def decode_failure(path: str, error: Exception) -> str:
    """The one line an input that failed to decode gets (an ImageError's own message)."""
    if isinstance(error, ImageError):
        return error.message
    # a decoder bug must not take the batch down
    logger.debug("unexpected failure decoding %s", path, exc_info=True)
    return f"cannot decode: {type(error).__name__}: {error}"


def wait(future: Future) -> Any:
    """future.result(), waking every WAKE_S: Ctrl-C is handled in the main thread only when it
    runs, and a signal that landed on a decode thread would otherwise wait for the decode."""
    while True:
        try:
            return future.result(timeout=WAKE_S)
        except FutureTimeout:
            continue
