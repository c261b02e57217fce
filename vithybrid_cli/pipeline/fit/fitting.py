"""Fit a Head on labeled example images: collect, embed (cached), split, regress, evaluate.

    DATA/invoice/*.jpg, DATA/receipt/*.jpg, ...   (or a CSV/JSONL of path,label)
      -> pooled embeddings through job.run_job (Runner + embed_task), read from / added to the cache
      -> stratified, seeded train/validation split (or a separate validation folder)
      -> standardize -> multinomial logistic regression, L2 (scikit-learn's C), full-batch L-BFGS
      -> C picked on the validation split from a small grid unless given
      -> a Head plus a FitReport (accuracy, per-class precision/recall/F1, confusion matrix)
      -> asked, the labels that are probably wrong, outliers and leaks (issues.py)

The parts live beside this module: examples.py (collecting, the split), cache.py (the embedding
cache, embedding), solver.py (the regression, C, metrics), issues.py (the labels probably
wrong); fit_head, its steps (one function each) and its FitReport are here.
The library returns data; the CLI renders it. Per-image failures are collected, not raised.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np

from ...data.items import display_path
from ...model.head import Head
from ...model.identity import ModelIdentity, model_identity
from .cache import EmbeddingCache, cache_settings, embed_examples
from .examples import (
    Example,
    Examples,
    FitError,
    apply_corrections,
    collect_folder,
    collect_labels_file,
    stratified_split,
)
from .solver import classification_metrics, fit_choosing_c, predict_proba, standardize_stats

if TYPE_CHECKING:
    from ...model.model import ViTHybrid


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
    # with find_issues: {"path", "label", "suggested", "score", "kind"[, "copy_of"]}, see
    # issues.py; None: not asked
    issues: list[dict] | None = None
    corrected: int = 0  # examples whose label a correction changed or that it dropped

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
            "corrected": self.corrected,
            "issues": None if self.issues is None else len(self.issues),
            "seconds": self.seconds,
        }


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
    corrections: Mapping[str, str | None] | None = None,
    find_issues: bool = False,
) -> FitReport:
    """Fit a head of your labels on `model`'s pooled embeddings; see the module docstring.

    `data` is a folder with one subfolder per label, or `labels_from` a CSV/JSONL of path,label.
    Validation: `val` (same layout) or a stratified `val_fraction` of the data, split with
    `seed`. `c` (scikit-learn's inverse regularization) is chosen on the validation split from
    C_GRID when None. With `cache_dir`, embeddings are read from and added to that cache.
    `progress(done, total)` is called as images are embedded. Raises FitError for unusable data.
    `corrections` (io/corrections.py's read_corrections) relabel or drop examples before the
    fit (examples.apply_corrections); `find_issues` fills FitReport.issues (issues.py).
    """
    from ..runner import RunOptions

    started = time.perf_counter()
    check_options(model, pool, val_fraction, c)
    found, val_found = collect_examples(data, labels_from, val, cache_dir)
    found, val_found, corrected = correct_examples(found, val_found, corrections)
    options = RunOptions(
        batch_size=batch_size,
        workers=workers,
        image_size=image_size,
        interpolate_pos_encoding=interpolate_pos_encoding,
    )
    identity = model_identity(model, options)
    cache = open_cache(model, identity, pool, options.fast_decode, cache_dir)
    everything = found.items + (val_found.items if val_found else [])
    paths = list(dict.fromkeys(example.path for example in everything))
    vectors, embed_errors, embedded = embed_examples(model, paths, options, pool, cache, progress)

    errors = found.errors + (val_found.errors if val_found else []) + embed_errors
    warnings = found.warnings + (val_found.warnings if val_found else [])
    labels, train_examples, counts = training_set(found, vectors)
    split = split_examples(labels, train_examples, val_found, vectors, val_fraction, seed)
    mean, std = standardize_stats(split.train_x)
    train_z, val_z = (split.train_x - mean) / std, (split.val_x - mean) / std
    chosen, weight, bias, c_scores = fit_choosing_c(
        train_z, split.train_y, val_z, split.val_y, len(labels), c
    )
    scores = evaluate(val_z, split.val_y, weight, bias, labels, split.val_paths)
    train_counts = np.bincount(split.train_y, minlength=len(labels)).tolist()
    val_counts = np.bincount(split.val_y, minlength=len(labels)).tolist()
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
        validation_accuracy=scores.accuracy,
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
        accuracy=scores.accuracy,
        precision=scores.precision,
        recall=scores.recall,
        f1=scores.f1,
        confusion=scores.confusion,
        errors=errors,
        warnings=warnings,
        embedded=embedded,
        cached=len(paths) - embedded,
        seconds=time.perf_counter() - started,
        validation=scores.validation,
        issues=issue_records(split, labels, chosen, seed) if find_issues else None,
        corrected=corrected,
    )


# ---------------------------------------------------------------------------- its steps


def check_options(model: ViTHybrid, pool: str, val_fraction: float, c: float | None) -> None:
    """Options that cannot make a head, refused before any image is read."""
    from ..tasks import check_pool

    try:
        check_pool(model, pool)
    except ValueError as error:
        raise FitError(str(error)) from None
    if not 0 <= val_fraction < 1:
        raise FitError(f"--val-fraction {val_fraction}: must be at least 0 and below 1")
    if c is not None and c <= 0:
        raise FitError(f"--c {c}: must be positive")


def collect_examples(
    data: str | os.PathLike | None,
    labels_from: str | os.PathLike | None,
    val: str | os.PathLike | None,
    cache_dir: str | os.PathLike | None,
) -> tuple[Examples, Examples | None]:
    """(training examples, validation examples or None); a cache folder inside is not data."""
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
    return found, val_found


def correct_examples(
    found: Examples, val_found: Examples | None, corrections: Mapping[str, str | None] | None
) -> tuple[Examples, Examples | None, int]:
    """(found, val_found) with `corrections` applied, and how many examples they changed; the
    corrections that match no example are said once, in a warning."""
    if not corrections:
        return found, val_found, 0
    everything = found.items + (val_found.items if val_found else [])
    before = {example.path: example.label for example in everything}
    (found, val_found), unmatched = apply_corrections(corrections, found, val_found)
    everything = found.items + (val_found.items if val_found else [])
    after = {example.path: example.label for example in everything}
    if unmatched:
        found.warnings.append(f"{unmatched} correction(s) match no example of this fit: ignored")
    return found, val_found, sum(after.get(path) != label for path, label in before.items())


def open_cache(
    model: ViTHybrid,
    identity: ModelIdentity,
    pool: str,
    fast_decode: bool,
    cache_dir: str | os.PathLike | None,
) -> EmbeddingCache | None:
    """The cache for this model, pool and precision (None without `cache_dir`)."""
    from ..backends import backend_settings

    ran = backend_settings(model)
    settings = cache_settings(identity, pool, ran["dtype"], fast_decode)
    if ran["backend"] != "torch":  # torch's caches keep their key (written before backends)
        settings["backend"] = ran["backend"]
    return EmbeddingCache(cache_dir, settings) if cache_dir else None


def training_set(
    found: Examples, vectors: dict[str, np.ndarray]
) -> tuple[list[str], list[Example], np.ndarray]:
    """(labels, the training examples that embedded, their count per label).

    Raises FitError for fewer than 2 labels, or a label with fewer than 2 readable examples.
    """
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
    return labels, train_examples, counts


@dataclass
class Split:
    """Features (float64) and label indices to fit on and to validate on."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    val_paths: list[str]
    train_paths: list[str] = field(default_factory=list)


def split_examples(
    labels: list[str],
    train_examples: list[Example],
    val_found: Examples | None,
    vectors: dict[str, np.ndarray],
    val_fraction: float,
    seed: int,
) -> Split:
    """The validation folder's examples, or a stratified, seeded share of the training ones."""
    index = {label: i for i, label in enumerate(labels)}
    features = np.stack([vectors[e.path] for e in train_examples]).astype(np.float64)
    targets = np.array([index[e.label] for e in train_examples], dtype=np.int64)
    if val_found is None:
        train_at, val_at = stratified_split(targets, val_fraction, seed)
        val_paths = [train_examples[i].path for i in val_at]
        train_paths = [train_examples[i].path for i in train_at]
        train_x, train_y = features[train_at], targets[train_at]
        return Split(train_x, train_y, features[val_at], targets[val_at], val_paths, train_paths)
    unknown = sorted({e.label for e in val_found.items} - set(labels))
    if unknown:
        raise FitError(f"validation labels not among the training labels: {', '.join(unknown)}")
    kept = [e for e in val_found.items if e.path in vectors]
    val_x = (
        np.stack([vectors[e.path] for e in kept]).astype(np.float64)
        if kept
        else np.zeros((0, features.shape[1]))
    )
    val_y = np.array([index[e.label] for e in kept], dtype=np.int64)
    train_paths = [e.path for e in train_examples]
    return Split(features, targets, val_x, val_y, [e.path for e in kept], train_paths)


@dataclass
class Scores:
    """The fitted head on the validation examples (empty without any)."""

    accuracy: float | None = None
    precision: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    f1: list[float] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    validation: list[tuple[str, str, list[tuple[str, float]]]] = field(default_factory=list)


def evaluate(
    val_x: np.ndarray,
    val_y: np.ndarray,
    weight: np.ndarray,
    bias: np.ndarray,
    labels: list[str],
    val_paths: list[str],
) -> Scores:
    """Accuracy, per-class precision/recall/F1, confusion, and each image's top 5 labels."""
    scores = Scores()
    if not len(val_y):
        return scores
    probabilities = predict_proba(val_x, weight, bias)
    predicted = probabilities.argmax(1)
    scores.accuracy = float((predicted == val_y).mean())
    scores.precision, scores.recall, scores.f1, scores.confusion = classification_metrics(
        val_y, predicted, len(labels)
    )
    for path, truth, row in zip(val_paths, val_y, probabilities, strict=True):
        ranked = [(labels[i], float(row[i])) for i in np.argsort(-row, kind="stable")[:5]]
        scores.validation.append((path, labels[truth], ranked))
    return scores


def issue_records(split: Split, labels: list[str], c: float, seed: int) -> list[dict]:
    """issues.find_issues over every labeled example (training and validation), as records."""
    from .issues import find_issues

    features = np.concatenate([split.train_x, split.val_x])
    targets = np.concatenate([split.train_y, split.val_y])
    paths = split.train_paths + split.val_paths
    train_at = np.arange(len(split.train_y))
    val_at = np.arange(len(split.train_y), len(targets))
    records = []
    for issue in find_issues(features, targets, len(labels), c, train_at, val_at, seed):
        record = {
            "path": paths[issue.index],
            "label": labels[issue.label],
            "suggested": None if issue.suggested is None else labels[issue.suggested],
            "score": round(issue.score, 6),
            "kind": issue.kind,
        }
        if issue.copy_of is not None:
            record["copy_of"] = paths[issue.copy_of]
        records.append(record)
    return records
