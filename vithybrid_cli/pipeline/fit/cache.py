"""The embedding cache of a fit: pooled embeddings by file identity, under a settings hash.

    file_key(path)                 real path, size, mtime -> a key (a changed file misses)
    cache_settings(identity, ...)  weights, pool, image size, dtype... -> the cache's folder
    embed_examples(...)            cache first; the rest through run_job (the one pipeline) into
                                   a CacheOutput, which adds each embedding to the cache

A refit with another C, split or seed embeds nothing; another pool or image size, everything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...data.items import InputItem
from ...model.identity import ModelIdentity

if TYPE_CHECKING:
    from ...model.model import ViTHybrid
    from ..runner import Result, RunOptions

logger = logging.getLogger(__name__)

CACHE_SUFFIX = ".cache"  # the default cache: OUTPUT + this, beside the head file


def file_key(path: str) -> str | None:
    """The cache key of a file's content as the OS describes it: real path, size, mtime."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    real = os.path.realpath(path)
    identity = f"{os.fsencode(real)!r}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def cache_settings(
    identity: ModelIdentity, pool: str, dtype: str, fast_decode: bool = True
) -> dict[str, object]:
    """Everything besides the file that decides an embedding; hashed into the cache folder."""
    return {
        "weights": identity.weights,
        "model": identity.model,
        "revision": identity.revision,
        "pool": pool,
        "image_size": list(identity.image_size),
        "interpolate_pos_encoding": identity.interpolate_pos_encoding,
        "dtype": dtype,
        "fast_decode": fast_decode,
    }


class EmbeddingCache:
    """Pooled embeddings by file key, under ROOT/<settings hash>/part-*.npz.

    Each fit appends new parts (arrays `keys`, `vectors`), written atomically, so concurrent
    fits and interrupted ones never leave a torn part. The model name and revision are not part
    of the hash: the weights fingerprint decides (a copied checkpoint reuses the cache).
    """

    FLUSH_EVERY = 256

    def __init__(self, root: str | os.PathLike, settings: dict[str, object]) -> None:
        keyed = {k: v for k, v in settings.items() if k not in ("model", "revision")}
        digest = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]
        self.directory = Path(root) / digest
        self.settings = settings
        self._pending_keys: list[str] = []
        self._pending_vectors: list[np.ndarray] = []
        self._entries: dict[str, np.ndarray] | None = None

    def entries(self) -> dict[str, np.ndarray]:
        if self._entries is None:
            self._entries = {}
            for part in sorted(self.directory.glob("part-*.npz")):
                try:
                    with np.load(part) as data:
                        keys, vectors = data["keys"], data["vectors"]
                except Exception as error:  # a damaged part only costs re-embedding
                    logger.warning("ignoring unreadable cache part %s: %s", part, error)
                    continue
                self._entries.update(zip(keys.tolist(), vectors, strict=True))
        return self._entries

    def get(self, key: str | None) -> np.ndarray | None:
        return None if key is None else self.entries().get(key)

    def add(self, key: str, vector: np.ndarray) -> None:
        self.entries()[key] = vector
        self._pending_keys.append(key)
        self._pending_vectors.append(np.asarray(vector, np.float32))
        if len(self._pending_keys) >= self.FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if not self._pending_keys:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        settings = self.directory / "settings.json"
        if not settings.exists():
            settings.write_text(json.dumps(self.settings, indent=2) + "\n")
        name = f"part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.npz"
        temporary = self.directory / f".{name}.tmp"
        with open(temporary, "wb") as handle:
            np.savez(
                handle, keys=np.array(self._pending_keys), vectors=np.stack(self._pending_vectors)
            )
        os.replace(temporary, self.directory / name)
        self._pending_keys, self._pending_vectors = [], []


def embed_examples(
    model: ViTHybrid,
    paths: Sequence[str],
    options: RunOptions,
    pool: str,
    cache: EmbeddingCache | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]], int]:
    """Pooled embeddings of `paths` (cache first, then run_job): (by path, errors, embedded)."""
    from ..job import run_job
    from ..runner import Runner
    from ..tasks import embed_task

    keys = {path: file_key(path) for path in paths}
    output = CacheOutput(cache, keys, len(paths), progress)
    missing = []
    for path in paths:
        hit = cache.get(keys[path]) if cache is not None else None
        if hit is not None:
            output.vectors[path] = hit
        else:
            missing.append(path)
    output.done = len(paths) - len(missing)
    if progress:
        progress(output.done, len(paths))
    if missing:
        items = [InputItem(path) for path in missing]
        task = embed_task(pool, normalize=False)
        if run_job(Runner(model, options), lambda: items, task, output).interrupted:
            raise KeyboardInterrupt  # the cache kept what was embedded (output.abort)
    return output.vectors, output.errors, len(missing)


class CacheOutput:
    """run_job's output for a fit: each embedding kept by path and added to the cache, each
    failure listed, progress told (done, total); the cache flushed at the end or on Ctrl-C."""

    def __init__(
        self,
        cache: EmbeddingCache | None,
        keys: dict[str, str | None],
        total: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.cache, self.keys, self.total, self.progress = cache, keys, total, progress
        self.vectors: dict[str, np.ndarray] = {}
        self.errors: list[tuple[str, str]] = []
        self.done = 0

    def open(self) -> set[str]:
        return set()  # what the cache holds is left out before the job: nothing to skip here

    def write(self, result: Result) -> None:
        if result.ok:
            self.vectors[result.path] = result.payload
            if self.cache is not None and self.keys[result.path] is not None:
                self.cache.add(self.keys[result.path], result.payload)
        else:
            self.errors.append((result.path, result.error))
        self.done += 1
        if self.progress:
            self.progress(self.done, self.total)

    def finish(self) -> None:
        if self.cache is not None:
            self.cache.flush()

    def abort(self) -> None:
        self.finish()  # keep what was embedded, also when interrupted


def default_cache_dir(output: str | os.PathLike) -> str:
    """Where `fit -o OUTPUT` keeps embeddings unless --cache says otherwise: OUTPUT.cache/."""
    return os.fspath(output) + CACHE_SUFFIX
