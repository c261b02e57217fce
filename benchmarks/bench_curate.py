#!/usr/bin/env python3
"""How well `fit --issues` finds flipped labels, beside cleanlab on scikit-learn's probabilities.

Set-up (embedding not timed): scikit-learn's bundled `load_digits` (8x8 grey digits, 10 classes)
upscaled to 64x64 PNGs, embedded once by the tiny random test checkpoint (tests/checkpoints.py:
there is no network, and no real-weights checkpoint in the HF cache) through the library's own
embedding path (pipeline/fit/cache.embed_examples, cls pool). Then, per seed:

  - 10% of the labels flipped to another class (uniformly), with that seed
  - C chosen as `fit` chooses it (solver.fit_choosing_c on a stratified 80/20 split of the noisy
    labels)
  - ours: pipeline/fit/issues.py (5-fold out-of-fold probabilities with solver.py's regression
    at that C; the confident-learning rule; kind "label")
  - cleanlab: `cleanlab.filter.find_label_issues(noisy, pred_probs)` (its defaults) on
    `sklearn.model_selection.cross_val_predict` of StandardScaler + LogisticRegression(C) over
    StratifiedKFold(5, shuffled with the seed): the SAME embeddings, the same C
  - also cleanlab's rule on our out-of-fold probabilities (which part makes any difference)

Printed: precision, recall and F1 of each flagged set against the flipped examples, per seed and
their mean.

    python benchmarks/bench_curate.py                 # 900 digits, seeds 0-2, ~1 min on 2 cores
    python benchmarks/bench_curate.py --count 1797 --seeds 0 1 2 3 4

Needs the dev extras (scikit-learn, cleanlab, transformers writes the checkpoint).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def embed_digits(work: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(embeddings (count, D), true labels) of the first `count` digits, upscaled to 64x64."""
    from checkpoints import make_checkpoint
    from PIL import Image
    from sklearn.datasets import load_digits

    from vithybrid_cli.model.weights import load_model
    from vithybrid_cli.pipeline.fit.cache import embed_examples
    from vithybrid_cli.pipeline.runner import RunOptions

    digits = load_digits()
    images = (digits.images[:count] * (255 / 16)).astype(np.uint8)
    paths = []
    for i, image in enumerate(images):
        path = work / f"{i:04d}.png"
        big = Image.fromarray(image).resize((64, 64), Image.Resampling.BILINEAR)
        big.convert("RGB").save(path)
        paths.append(str(path))
    checkpoint = work / "checkpoint"
    checkpoint.mkdir()
    make_checkpoint(checkpoint, "tiny", 0)
    model = load_model(checkpoint)
    vectors, errors, _ = embed_examples(model, paths, RunOptions(), "cls", None)
    assert not errors, errors
    return np.stack([vectors[path] for path in paths]).astype(np.float64), digits.target[:count]


def flip(labels: np.ndarray, fraction: float, classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flipped = rng.choice(len(labels), round(len(labels) * fraction), replace=False)
    noisy[flipped] = (labels[flipped] + rng.integers(1, classes, len(flipped))) % classes
    return noisy


def choose_c(features: np.ndarray, noisy: np.ndarray, classes: int, seed: int) -> float:
    """The C `fit` would choose on these (noisy) labels."""
    from vithybrid_cli.pipeline.fit.examples import stratified_split
    from vithybrid_cli.pipeline.fit.solver import fit_choosing_c, standardize_stats

    train, val = stratified_split(noisy, 0.2, seed)
    mean, std = standardize_stats(features[train])
    c, *_ = fit_choosing_c(
        (features[train] - mean) / std, noisy[train], (features[val] - mean) / std, noisy[val],
        classes, None,
    )  # fmt: skip
    return c


def scores(flagged: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    hits = int((flagged & truth).sum())
    precision = hits / max(1, int(flagged.sum()))
    recall = hits / max(1, int(truth.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def run_seed(features, labels, classes, seed, fraction):
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from vithybrid_cli.pipeline.fit.issues import label_issues, out_of_fold_probabilities

    noisy = flip(labels, fraction, classes, seed)
    truth = noisy != labels
    c = choose_c(features, noisy, classes, seed)
    results = {}
    started = time.perf_counter()
    ours_probs = out_of_fold_probabilities(features, noisy, classes, c, seed=seed)
    ours = np.zeros(len(labels), dtype=bool)
    ours[[issue.index for issue in label_issues(ours_probs, noisy)]] = True
    results["ours"] = (*scores(ours, truth), time.perf_counter() - started)

    started = time.perf_counter()
    regression = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    folds = StratifiedKFold(5, shuffle=True, random_state=seed)
    sk_probs = cross_val_predict(regression, features, noisy, cv=folds, method="predict_proba")
    cleanlab = find_label_issues(noisy, sk_probs)
    results["cleanlab"] = (*scores(cleanlab, truth), time.perf_counter() - started)
    results["cleanlab rule, our probabilities"] = (
        *scores(find_label_issues(noisy, ours_probs), truth), 0.0,
    )  # fmt: skip
    return c, int(truth.sum()), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=900, help="digits to use (max 1797)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--fraction", type=float, default=0.1, help="labels flipped")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # the tiny model's kernels are too small for two
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        features, labels = embed_digits(Path(work), args.count)
        print(f"{len(labels)} digits embedded ({features.shape[1]}-d) in "
              f"{time.perf_counter() - started:.1f} s")  # fmt: skip
    classes = int(labels.max()) + 1
    totals: dict[str, list] = {}
    print(f"{'seed':>4} {'C':>7} {'flips':>5}  {'method':<34} {'precision':>9} {'recall':>7} "
          f"{'F1':>6} {'s':>6}")  # fmt: skip
    for seed in args.seeds:
        c, flips, results = run_seed(features, labels, classes, seed, args.fraction)
        for name, (precision, recall, f1, seconds) in results.items():
            totals.setdefault(name, []).append((precision, recall, f1))
            print(f"{seed:>4} {c:>7g} {flips:>5}  {name:<34} {precision:>9.3f} {recall:>7.3f} "
                  f"{f1:>6.3f} {seconds:>6.2f}")  # fmt: skip
    for name, rows in totals.items():
        precision, recall, f1 = np.mean(rows, axis=0)
        print(f"mean {'':>7} {'':>5}  {name:<34} {precision:>9.3f} {recall:>7.3f} {f1:>6.3f}")


if __name__ == "__main__":
    main()
