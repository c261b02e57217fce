"""Ray Data building blocks: callables for your own `ds.map_batches(...)`, the same code the
`--engine ray` of `vithybrid classify|embed` runs (pipeline/engines/ray_engine.py).

    import ray
    from vithybrid_cli.ray import Classifier

    photos = ray.data.read_binary_files("s3://bucket/photos/", include_paths=True)
    labels = photos.map_batches(
        Classifier, fn_constructor_kwargs={"model": "hybrid-tiny-224", "top_k": 3},
        concurrency=2, batch_size=16,
    )
    labels.write_parquet("s3://bucket/labels/")

Batches in (numpy format): `path`, and the image as one of `bytes` (the file's bytes, as
`read_binary_files(..., include_paths=True)` gives them), `item` (a pickled data.items.InputItem:
what the CLI's engine sends) or `pixels` (model inputs from `Decoder`); an optional `error`
column (a non-empty string: the input already failed). Decoding and preprocessing are the local
engine's (data/preprocess.py), so are the tasks (pipeline/tasks.py).

Batches out (pyarrow tables), one row per input, failures included:
    Classifier  the local engine's Parquet record columns: path, label, score, index,
                top_k_labels, top_k_scores, top_k_indices, error
    Embedder    path, embedding (fixed_size_list<float32>, null on failure), error
    Decoder     path, pixels (float32 (3, H, W); zeros on failure), error ("" when none)

Use `Decoder` as a CPU `map_batches` step before the model actors to decode on every node's
CPUs apart from the model (as the CLI does); without it the model actors decode themselves.
"""

from __future__ import annotations

import io
import pickle
from typing import TYPE_CHECKING, Any

import numpy as np

from .model.config import DEFAULT_MODEL_ID, PreprocessConfig

if TYPE_CHECKING:
    from .model.head import Head

__all__ = ["Classifier", "Decoder", "Embedder"]


def _errors_of(batch: dict[str, Any], count: int) -> list[str | None]:
    if "error" not in batch:
        return [None] * count
    return [str(error) if error is not None and str(error) else None for error in batch["error"]]


def _source(batch: dict[str, Any], row: int) -> Any:
    """What load_image opens for row `row`: a pickled InputItem, or the file's bytes."""
    if "item" in batch:
        return pickle.loads(batch["item"][row])
    return io.BytesIO(bytes(batch["bytes"][row]))


def _paths(batch: dict[str, Any]) -> list[str]:
    from .io.outputs import safe_text

    return [safe_text(str(path)) for path in batch["path"]]


class Decoder:
    """CPU step: image bytes -> model input, with the local engine's decode, resize and crop.

    Build it from a model (`Decoder("hybrid-tiny-224")`: reads its preprocessing configuration,
    not its weights) or from a PreprocessConfig (`Decoder(config=model.preprocess_config)`).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL_ID,
        *,
        revision: str | None = None,
        config: PreprocessConfig | None = None,
        image_size: tuple[int, int] | None = None,
        fast_decode: bool = True,
    ) -> None:
        if config is None:
            from .model.weights import read_configs, resolve_checkpoint

            _, config = read_configs(resolve_checkpoint(model, revision))
        from .model.config import target_size

        self.config, self.image_size, self.fast_decode = config, image_size, fast_decode
        self.size = tuple(image_size) if image_size else target_size(config)  # (width, height)

    def decode(self, batch: dict[str, Any]) -> tuple[list[str], np.ndarray, list[str | None]]:
        """(paths, (B, 3, H, W) float32 pixels with zeros for failures, errors)."""
        from .data.preprocess import load_and_preprocess
        from .pipeline.runner import decode_failure

        paths = _paths(batch)
        errors = _errors_of(batch, len(paths))
        width, height = self.size
        pixels = np.zeros((len(paths), 3, height, width), dtype=np.float32)
        for row, path in enumerate(paths):
            if errors[row] is not None:
                continue
            try:
                source = _source(batch, row)
                pixels[row] = load_and_preprocess(
                    source, self.config, self.image_size, fast_decode=self.fast_decode
                )
            except Exception as error:
                errors[row] = decode_failure(path, error)
        return paths, pixels, errors

    def __call__(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        paths, pixels, errors = self.decode(batch)
        return {
            "path": np.array(paths, dtype=object),
            "pixels": pixels,
            "error": np.array([error or "" for error in errors], dtype=object),
        }


class _ModelStep:
    """The model in a Ray actor: loads the checkpoint once, runs the task on each batch."""

    kind = "records"

    def __init__(
        self,
        model: str = DEFAULT_MODEL_ID,
        *,
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        image_size: tuple[int, int] | None = None,
        interpolate_pos_encoding: bool = False,
        batch_size: int | None = None,
        threads: int | None = None,
        compile: bool = False,
        backend: str = "torch",
    ) -> None:
        import torch

        from .pipeline.backends import load_run_model
        from .pipeline.runner import Runner, RunOptions

        if threads:  # Ray starts workers with OMP_NUM_THREADS=1 (see the engine)
            torch.set_num_threads(threads)
        self.model = load_run_model(
            model, revision, device=device, dtype=dtype, backend=backend,
            compile_model=compile, threads=threads,
        )  # fmt: skip
        options = RunOptions(
            batch_size=batch_size,
            image_size=tuple(image_size) if image_size else None,
            interpolate_pos_encoding=interpolate_pos_encoding,
        )
        self.runner = Runner(self.model, options)
        self.task = self.make_task()
        self.decoder = Decoder(config=self.model.preprocess_config, image_size=options.image_size)

    def make_task(self) -> Any:
        raise NotImplementedError

    @property
    def settings(self) -> dict[str, Any]:
        """Everything that shapes a row (model, weights, dtype, size, task options)."""
        from .pipeline.job import job_settings

        return job_settings(self.runner, self.task)

    def payloads(self, batch: dict[str, Any]) -> tuple[list[str], list[Any], list[str | None]]:
        """(paths, payloads (None for failures), errors) of one batch."""
        if "pixels" in batch:
            paths = _paths(batch)
            pixels = np.asarray(batch["pixels"], dtype=np.float32)
            errors = _errors_of(batch, len(paths))
        else:
            paths, pixels, errors = self.decoder.decode(batch)
        payloads: list[Any] = [None] * len(paths)
        rows = [row for row, error in enumerate(errors) if error is None]
        step = self.runner.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            outputs = self.runner.forward(pixels[chunk], self.task)
            for row, payload in zip(chunk, outputs, strict=True):
                payloads[row] = payload
        return paths, payloads, errors

    def __call__(self, batch: dict[str, Any]) -> Any:
        return self.table(*self.payloads(batch))

    def table(self, paths: list[str], payloads: list[Any], errors: list[str | None]) -> Any:
        raise NotImplementedError


class Classifier(_ModelStep):
    """Labels: the checkpoint's classes, or a fitted head's (`head`: a Head or its file)."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL_ID,
        *,
        top_k: int = 5,
        head: Head | str | None = None,
        min_score: float | None = None,
        **options: Any,
    ) -> None:
        from .model.head import load_head

        self.top_k, self.min_score = top_k, min_score
        self.head_source = head if isinstance(head, str) else "head"
        self.head = load_head(head) if isinstance(head, str) else head
        super().__init__(model, **options)

    def make_task(self) -> Any:
        from .pipeline.tasks import labeling_task

        options = self.runner.options
        return labeling_task(
            self.model, options, self.top_k, self.head, self.min_score, self.head_source
        )

    def table(self, paths: list[str], payloads: list[Any], errors: list[str | None]) -> Any:
        import pyarrow as pa

        from .io.outputs import record_of
        from .io.parquet import record_row, record_schema

        rows = [
            record_row(record_of(path, payload, error))
            for path, payload, error in zip(paths, payloads, errors, strict=True)
        ]
        return pa.Table.from_pylist(rows, schema=record_schema(pa))


class Embedder(_ModelStep):
    """One float32 vector per image (`pool` cls / mean / pooler, `normalize`, or every token)."""

    kind = "embeddings"

    def __init__(
        self,
        model: str = DEFAULT_MODEL_ID,
        *,
        pool: str = "cls",
        normalize: bool = False,
        tokens: bool = False,
        **options: Any,
    ) -> None:
        self.pool, self.normalize, self.tokens = pool, normalize, tokens
        super().__init__(model, **options)
        # The row shape, known before any input: a batch of failures still has the column type.
        width, height = self.runner.input_size
        probe = np.zeros((1, 3, height, width), dtype=np.float32)
        self.row_shape = tuple(self.runner.forward(probe, self.task)[0].shape)

    def make_task(self) -> Any:
        from .pipeline.tasks import check_pool, embed_task

        check_pool(self.model, self.pool)
        return embed_task(self.pool, self.normalize, self.tokens)

    def table(self, paths: list[str], payloads: list[Any], errors: list[str | None]) -> Any:
        import pyarrow as pa

        from .io.parquet import embedding_array

        vectors = np.zeros((len(paths), *self.row_shape), dtype=np.float32)
        for row, payload in enumerate(payloads):
            if payload is not None:
                vectors[row] = payload
        failed = np.array([error is not None for error in errors], dtype=bool)
        return pa.table(
            {
                "path": pa.array(paths, pa.string()),
                "embedding": embedding_array(pa, vectors, failed),
                "error": pa.array(errors, pa.string()),
            }
        )
