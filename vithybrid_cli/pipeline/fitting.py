"""Fit a Head on labeled example images: collect, embed (cached), split, regress, evaluate.

    DATA/invoice/*.jpg, DATA/receipt/*.jpg, ...   (or a CSV/JSONL of path,label)
      -> pooled embeddings through runner.Runner + embed_task, read from / added to the cache
      -> stratified, seeded train/validation split (or a separate validation folder)
      -> standardize -> multinomial logistic regression, L2 (scikit-learn's C), full-batch L-BFGS
      -> C picked on the validation split from a small grid unless given
      -> a Head plus a FitReport (accuracy, per-class precision/recall/F1, confusion matrix)

The library returns data; the CLI renders it. Per-image failures are collected, not raised.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..data.inputs import InputItem, WalkNotes, display_path, iter_inputs
from ..model.head import Head, ModelIdentity, model_identity

if TYPE_CHECKING:
    from ..model.model import ViTHybrid
    from .runner import RunOptions

logger = logging.getLogger(__name__)

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_C = 1.0  # when there is no validation split to choose on
CACHE_SUFFIX = ".cache"  # the default cache: OUTPUT + this, beside the head file


class FitError(ValueError):
    """Training data that cannot make a head; one line, naming the file or label."""


@dataclass(frozen=True)
class Example:
    path: str
    label: str


@dataclass
class Examples:
    """Labeled images found, plus what went wrong finding them."""

    items: list[Example] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, message)
    warnings: list[str] = field(default_factory=list)


@dataclass
class FitReport:
    """Everything a fit produced; `head` is what to save."""

    head: Head
    labels: list[str]
    c: float
    c_scores: list[tuple[float, float, float]]  # (C, validation accuracy, validation log-loss)
    train_counts: list[int]
    val_counts: list[int]
    accuracy: float | None  # None: no validation examples
    precision: list[float]
    recall: list[float]
    f1: list[float]
    confusion: list[list[int]]  # [true][predicted], over the validation examples
    errors: list[tuple[str, str]]  # images left out: (path, message)
    warnings: list[str]
    embedded: int  # images run through the model
    cached: int  # images whose embedding came from the cache
    seconds: float = 0.0
    # each validation image: (path, true label, [(label, probability), ...] best first)
    validation: list[tuple[str, str, list[tuple[str, float]]]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-ready (for --format json); the head itself is described, not included."""
        return {
            "labels": self.labels,
            "c": self.c,
            "c_scores": [
                {"c": c, "accuracy": accuracy, "log_loss": loss}
                for c, accuracy, loss in self.c_scores
            ],
            "validation_accuracy": self.accuracy,
            "per_class": [
                {
                    "label": label,
                    "train": self.train_counts[i],
                    "validation": self.val_counts[i],
                    "precision": self.precision[i] if self.precision else None,
                    "recall": self.recall[i] if self.recall else None,
                    "f1": self.f1[i] if self.f1 else None,
                }
                for i, label in enumerate(self.labels)
            ],
            "confusion": self.confusion,
            "errors": [{"path": display_path(p), "error": m} for p, m in self.errors],
            "warnings": self.warnings,
            "embedded": self.embedded,
            "cached": self.cached,
            "seconds": self.seconds,
        }


# ---------------------------------------------------------------------------- examples


def collect_folder(root: str, exclude: Sequence[str] = ()) -> Examples:
    """ImageFolder convention: one subfolder per label, images anywhere below it."""
    if not os.path.exists(root):
        raise FitError(f"{display_path(root)}: no such folder")
    if not os.path.isdir(root):
        raise FitError(
            f"{display_path(root)} is not a folder: give one subfolder per label, "
            "or a CSV/JSONL of path,label with --labels-from"
        )
    excluded = {os.path.realpath(path) for path in exclude}
    found, notes = Examples(), WalkNotes()
    loose = 0
    with os.scandir(root) as scan:
        entries = sorted(
            (entry for entry in scan if not entry.name.startswith(".")),
            key=lambda entry: os.fsencode(entry.name),
        )
    for entry in entries:
        if not entry.is_dir():
            loose += entry.is_file()
            continue
        if os.path.realpath(entry.path) in excluded:
            continue
        before = len(found.items)
        for item in iter_inputs([entry.path], notes=notes):
            if isinstance(item, InputItem):
                found.items.append(Example(item.path, entry.name))
            elif (
                item.message.startswith("directory contains no images") and item.path == entry.path
            ):
                pass  # reported below, as a skipped label
            else:
                found.errors.append((item.path, item.message))
        if len(found.items) == before:
            found.warnings.append(f"label folder {display_path(entry.path)} has no images: skipped")
    found.warnings += notes.undecodable_lines()  # formats this install cannot decode
    if loose:
        found.warnings.append(
            f"{loose} file(s) directly in {display_path(root)} are in no label folder: ignored"
        )
    if not found.items:
        raise FitError(
            f"{display_path(root)} has no images in label folders: expected "
            f"{display_path(root)}/LABEL/IMAGE, one subfolder per label"
        )
    return found


def collect_labels_file(labels_file: str) -> Examples:
    """Examples from a CSV (path,label; header optional) or JSONL ({"path", "label"}) file.

    Relative paths are relative to the labels file's folder; a path may be a file, a folder or
    a glob (every image it names gets the label).
    """
    try:
        with open(labels_file, encoding="utf-8-sig") as handle:
            text = handle.read()
    except OSError as error:
        raise FitError(f"{display_path(labels_file)}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise FitError(f"{display_path(labels_file)}: not UTF-8 text") from None
    base = os.path.dirname(labels_file)
    found, notes = Examples(), WalkNotes()
    for line_number, path, label in _label_rows(labels_file, text):
        if not path or not label:
            raise FitError(f"{display_path(labels_file)}:{line_number}: needs a path and a label")
        spec = path if os.path.isabs(path) else os.path.join(base, path)
        for item in iter_inputs([spec], notes=notes):
            if isinstance(item, InputItem):
                found.items.append(Example(item.path, label))
            else:
                found.errors.append((item.path, item.message))
    found.warnings += notes.undecodable_lines()
    if not found.items:
        raise FitError(f"{display_path(labels_file)}: names no readable images")
    return found


def _label_rows(name: str, text: str) -> Iterator[tuple[int, str, str]]:
    jsonl = name.lower().endswith((".jsonl", ".ndjson")) or text.lstrip().startswith("{")
    if jsonl:
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                yield number, str(row["path"]), str(row["label"])
            except (ValueError, KeyError, TypeError):
                raise FitError(
                    f'{display_path(name)}:{number}: expected {{"path": ..., "label": ...}}'
                ) from None
        return
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if number == 1 and [cell.strip().lower() for cell in row[:2]] == ["path", "label"]:
            continue
        if len(row) != 2:
            raise FitError(
                f"{display_path(name)}:{number}: expected 2 columns (path,label), got {len(row)} "
                "(quote labels that contain commas)"
            )
        yield number, row[0].strip(), row[1].strip()


def stratified_split(
    targets: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, validation indices): per class, a seeded shuffle, at least one of each."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        count = 0
        if val_fraction > 0:
            count = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


# ---------------------------------------------------------------------------- the cache


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


# ---------------------------------------------------------------------------- embedding


def embed_examples(
    model: ViTHybrid,
    paths: Sequence[str],
    options: RunOptions,
    pool: str,
    cache: EmbeddingCache | None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, np.ndarray], list[tuple[str, str]], int]:
    """Pooled embeddings of `paths` (cache first, then the Runner): (by path, errors, embedded)."""
    from .runner import Runner
    from .tasks import embed_task

    vectors: dict[str, np.ndarray] = {}
    errors: list[tuple[str, str]] = []
    keys = {path: file_key(path) for path in paths}
    missing = []
    for path in paths:
        hit = cache.get(keys[path]) if cache is not None else None
        if hit is not None:
            vectors[path] = hit
        else:
            missing.append(path)
    done = len(paths) - len(missing)
    if progress:
        progress(done, len(paths))
    if missing:
        runner = Runner(model, options)
        items = (InputItem(path) for path in missing)
        try:
            for result in runner.run(items, embed_task(pool, normalize=False)):
                if result.ok:
                    vectors[result.path] = result.payload
                    if cache is not None and keys[result.path] is not None:
                        cache.add(keys[result.path], result.payload)
                else:
                    errors.append((result.path, result.error))
                done += 1
                if progress:
                    progress(done, len(paths))
        finally:
            if cache is not None:
                cache.flush()  # keep what was embedded, also when interrupted
    return vectors, errors, len(missing)


# ---------------------------------------------------------------------------- the regression


def standardize_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    std = features.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def fit_logistic(
    features: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    c: float,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    max_iter: int = 500,
    tolerance: float = 1e-6,
) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression, full-batch L-BFGS in float64: (weight (K, D), bias (K,)).

    Minimizes scikit-learn's objective, C * sum(cross-entropy) + ||weight||^2 / 2 (the bias
    unpenalized), divided by C * n as scikit-learn does; the minimizer is the same. Stops when
    no gradient entry exceeds `tolerance`. The gradient is written out (softmax minus one-hot):
    on the small problems a head fits, autograd's per-call overhead is what would cost.
    """
    import torch

    x = torch.as_tensor(features, dtype=torch.float64)
    one_hot = torch.nn.functional.one_hot(torch.as_tensor(targets), num_classes).double()
    n, size = x.shape
    penalty = 1.0 / (2.0 * c * n)
    split = num_classes * size  # parameters: weight (flattened), then bias

    def loss_and_gradient(theta: torch.Tensor) -> tuple[float, torch.Tensor]:
        weight, bias = theta[:split].view(num_classes, size), theta[split:]
        log_p = torch.log_softmax(torch.addmm(bias, x, weight.T), dim=1)
        residual = (log_p.exp() - one_hot) / n  # d(mean cross-entropy) / d(logits)
        gradient = torch.cat([(residual.T @ x + (2 * penalty) * weight).flatten(), residual.sum(0)])
        loss = -(log_p * one_hot).sum() / n + penalty * weight.square().sum()
        return float(loss), gradient

    if init is None:
        theta = torch.zeros(split + num_classes, dtype=torch.float64)
    else:
        theta = torch.cat([torch.as_tensor(init[0]).flatten(), torch.as_tensor(init[1])]).double()
    # One thread: a head's kernels are small (dot products over ~10^4 numbers, matmuls of
    # ~10^3 x 768), so a second thread gains little, and on a busy machine every OpenMP region
    # waits for it (measured on 2 loaded cores: a 7,690-number dot took 8 ms, not microseconds).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        theta = lbfgs(loss_and_gradient, theta, max_iter, tolerance)
    finally:
        torch.set_num_threads(threads)
    return theta[:split].view(num_classes, size).numpy(), theta[split:].numpy()


def lbfgs(
    loss_and_gradient: Callable,
    theta,
    max_iter: int,
    tolerance: float,
    history: int = 20,
):
    """Minimize a smooth convex function: L-BFGS directions, Armijo backtracking steps.

    (torch.optim.LBFGS would do, but importing torch.optim pulls in torch._dynamo: seconds.)
    """
    loss, gradient = loss_and_gradient(theta)
    steps: list[tuple] = []  # (s, y, 1 / s.y), oldest first
    for iteration in range(max_iter):
        if float(gradient.abs().max()) <= tolerance:
            break
        # Two-loop recursion: direction = -H gradient, H the inverse-Hessian estimate.
        q = gradient.clone()
        alphas = []
        for s, y, rho in reversed(steps):
            alpha = rho * float(s @ q)
            q -= alpha * y
            alphas.append(alpha)
        if steps:
            s, y, _ = steps[-1]
            q *= float(s @ y) / float(y @ y)
        elif iteration == 0:
            q *= min(1.0, 1.0 / float(gradient.abs().sum()))  # a cautious first step
        for (s, y, rho), alpha in zip(steps, reversed(alphas), strict=True):
            q += s * (alpha - rho * float(y @ q))
        direction = -q
        slope = float(gradient @ direction)
        if slope >= 0:  # not a descent direction: forget the curvature pairs
            steps.clear()
            direction, slope = -gradient, -float(gradient @ gradient)
        step = 1.0
        while True:
            candidate = theta + step * direction
            new_loss, new_gradient = loss_and_gradient(candidate)
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s, y = candidate - theta, new_gradient - gradient
        curvature = float(s @ y)
        if curvature > 1e-12:
            steps.append((s, y, 1.0 / curvature))
            del steps[:-history]
        change = loss - new_loss
        theta, loss, gradient = candidate, new_loss, new_gradient
        if change <= 1e-15 * max(1.0, abs(loss)) and step < 1e-12:
            break
    return theta


def predict_proba(features: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = features @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, targets: np.ndarray) -> float:
    picked = probabilities[np.arange(len(targets)), targets]
    return float(-np.log(np.clip(picked, 1e-15, None)).mean())


def classification_metrics(
    targets: np.ndarray, predicted: np.ndarray, num_classes: int
) -> tuple[list[float], list[float], list[float], list[list[int]]]:
    """Per-class precision, recall, F1 (0 where undefined) and the confusion matrix."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (targets, predicted), 1)
    hits = np.diag(confusion).astype(np.float64)
    predicted_counts, true_counts = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(
        hits, predicted_counts, out=np.zeros_like(hits), where=predicted_counts > 0
    )
    recall = np.divide(hits, true_counts, out=np.zeros_like(hits), where=true_counts > 0)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(hits), where=total > 0)
    return precision.tolist(), recall.tolist(), f1.tolist(), confusion.tolist()


# ---------------------------------------------------------------------------- fit_head


def fit_head(
    model: ViTHybrid,
    data: str | os.PathLike | None = None,
    *,
    labels_from: str | os.PathLike | None = None,
    val: str | os.PathLike | None = None,
    val_fraction: float = 0.2,
    c: float | None = None,
    pool: str = "cls",
    image_size: tuple[int, int] | None = None,
    interpolate_pos_encoding: bool = False,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> FitReport:
    """Fit a head of your labels on `model`'s pooled embeddings; see the module docstring.

    `data` is a folder with one subfolder per label, or `labels_from` a CSV/JSONL of path,label.
    Validation: `val` (same layout) or a stratified `val_fraction` of the data, split with
    `seed`. `c` (scikit-learn's inverse regularization) is chosen on the validation split from
    C_GRID when None. With `cache_dir`, embeddings are read from and added to that cache.
    `progress(done, total)` is called as images are embedded. Raises FitError for unusable data.
    """
    from .backends import backend_settings
    from .runner import RunOptions
    from .tasks import check_pool

    started = time.perf_counter()
    try:
        check_pool(model, pool)
    except ValueError as error:
        raise FitError(str(error)) from None
    if not 0 <= val_fraction < 1:
        raise FitError(f"--val-fraction {val_fraction}: must be at least 0 and below 1")
    if c is not None and c <= 0:
        raise FitError(f"--c {c}: must be positive")
    exclude = [os.fspath(cache_dir)] if cache_dir else []
    if labels_from is not None and data is not None:
        raise FitError("give a data folder or --labels-from, not both")
    if labels_from is not None:
        found = collect_labels_file(os.fspath(labels_from))
    elif data is not None:
        found = collect_folder(os.fspath(data), exclude)
    else:
        raise FitError("no training data: give a folder of label folders, or --labels-from FILE")
    val_found = collect_folder(os.fspath(val), exclude) if val is not None else None

    options = RunOptions(
        batch_size=batch_size,
        workers=workers,
        image_size=image_size,
        interpolate_pos_encoding=interpolate_pos_encoding,
    )
    identity = model_identity(model, options)
    ran = backend_settings(model)
    settings = cache_settings(identity, pool, ran["dtype"], options.fast_decode)
    if ran["backend"] != "torch":  # torch's caches keep their key (written before backends)
        settings["backend"] = ran["backend"]
    cache = EmbeddingCache(cache_dir, settings) if cache_dir else None
    everything = found.items + (val_found.items if val_found else [])
    paths = list(dict.fromkeys(example.path for example in everything))
    vectors, embed_errors, embedded = embed_examples(model, paths, options, pool, cache, progress)

    errors = found.errors + (val_found.errors if val_found else []) + embed_errors
    warnings = found.warnings + (val_found.warnings if val_found else [])
    train_examples = [e for e in found.items if e.path in vectors]
    labels = sorted({example.label for example in found.items})
    if len(labels) < 2:
        raise FitError(
            f"only one label ({labels[0]!r}): a head needs at least 2 labels "
            "(one subfolder per label)"
        )
    index = {label: i for i, label in enumerate(labels)}
    counts = np.bincount([index[e.label] for e in train_examples], minlength=len(labels))
    short = [f"{labels[i]!r} ({n})" for i, n in enumerate(counts) if n < 2]
    if short:
        raise FitError(
            f"every label needs at least 2 readable examples; too few for {', '.join(short)}"
        )
    features = np.stack([vectors[e.path] for e in train_examples]).astype(np.float64)
    targets = np.array([index[e.label] for e in train_examples], dtype=np.int64)

    if val_found is not None:
        unknown = sorted({e.label for e in val_found.items} - set(labels))
        if unknown:
            raise FitError(f"validation labels not among the training labels: {', '.join(unknown)}")
        kept = [e for e in val_found.items if e.path in vectors]
        val_paths = [e.path for e in kept]
        train_x, train_y = features, targets
        val_x = (
            np.stack([vectors[e.path] for e in kept]).astype(np.float64)
            if kept
            else np.zeros((0, features.shape[1]))
        )
        val_y = np.array([index[e.label] for e in kept], dtype=np.int64)
    else:
        train_at, val_at = stratified_split(targets, val_fraction, seed)
        val_paths = [train_examples[i].path for i in val_at]
        train_x, train_y = features[train_at], targets[train_at]
        val_x, val_y = features[val_at], targets[val_at]

    mean, std = standardize_stats(train_x)
    train_z, val_z = (train_x - mean) / std, (val_x - mean) / std
    classes = len(labels)
    c_scores: list[tuple[float, float, float]] = []
    if c is not None or len(val_y) == 0:
        chosen = c if c is not None else DEFAULT_C
        weight, bias = fit_logistic(train_z, train_y, classes, chosen)
        if len(val_y):
            probabilities = predict_proba(val_z, weight, bias)
            accuracy = float((probabilities.argmax(1) == val_y).mean())
            c_scores.append((chosen, accuracy, log_loss(probabilities, val_y)))
    else:
        best = None
        init = None
        for candidate in C_GRID:  # strongest regularization first; each warm-starts the next
            weight, bias = fit_logistic(train_z, train_y, classes, candidate, init=init)
            init = (weight, bias)
            probabilities = predict_proba(val_z, weight, bias)
            accuracy = float((probabilities.argmax(1) == val_y).mean())
            loss = log_loss(probabilities, val_y)
            c_scores.append((candidate, accuracy, loss))
            if best is None or (accuracy, -loss) > (best[1], -best[2]):
                best = (candidate, accuracy, loss, weight, bias)
        chosen, _, _, weight, bias = best

    val_accuracy = None
    precision = recall = f1 = []
    confusion: list[list[int]] = []
    validation = []
    if len(val_y):
        probabilities = predict_proba(val_z, weight, bias)
        predicted = probabilities.argmax(1)
        val_accuracy = float((predicted == val_y).mean())
        precision, recall, f1, confusion = classification_metrics(val_y, predicted, classes)
        for path, truth, row in zip(val_paths, val_y, probabilities, strict=True):
            ranked = [(labels[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:5]]
            validation.append((path, labels[truth], ranked))
    train_counts = np.bincount(train_y, minlength=classes).tolist()
    val_counts = np.bincount(val_y, minlength=classes).tolist()
    head = Head(
        weight=weight.astype(np.float32),
        bias=bias.astype(np.float32),
        mean=mean.astype(np.float32),
        std=std.astype(np.float32),
        labels=labels,
        pool=pool,
        model=identity.model,
        revision=identity.revision,
        weights=identity.weights,
        image_size=identity.image_size,
        interpolate_pos_encoding=interpolate_pos_encoding,
        c=float(chosen),
        validation_accuracy=val_accuracy,
        examples_per_class={
            label: int(counts[i]) + (0 if val_found is None else val_counts[i])
            for i, label in enumerate(labels)
        },
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    return FitReport(
        head=head,
        labels=labels,
        c=float(chosen),
        c_scores=c_scores,
        train_counts=train_counts,
        val_counts=val_counts,
        accuracy=val_accuracy,
        precision=precision,
        recall=recall,
        f1=f1,
        confusion=confusion,
        errors=errors,
        warnings=warnings,
        embedded=embedded,
        cached=len(paths) - embedded,
        seconds=time.perf_counter() - started,
        validation=validation,
    )


def default_cache_dir(output: str | os.PathLike) -> str:
    """Where `fit -o OUTPUT` keeps embeddings unless --cache says otherwise: OUTPUT.cache/."""
    return os.fspath(output) + CACHE_SUFFIX
