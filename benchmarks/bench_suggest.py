#!/usr/bin/env python3
"""Does labeling the photos `vithybrid suggest` picks beat labeling random ones? (goal: never
worse, for N = 10, 20, 40).

Set-up: scikit-learn's bundled handwritten digits (1,797 real 8x8 scans, 10 classes), upscaled
to 64x64 RGB with a random shift and contrast jitter each, embedded (--pool mean) by the model.
There is no network here, so the model is the tiny random test checkpoint (tests/checkpoints.py)
run at 32x32 with --interpolate-pos-encoding (its best size for digits of the few tried): its
32-d embeddings separate digits only partly (a head on 300 labels reaches ~0.47), which leaves
room for the choice of labels to matter. The digits are split once into a pool
(1,200) and a held-out test set (597).

Per seed: a labeled seed set of 2 photos per class; a head fitted on it (the fit solver on the
standardized embeddings, C = 1, as `fit` does without a validation split); then N more labels,
chosen from the rest of the pool by

  random      N at random
  suggest     search.suggest.suggest (the top 4N by margin uncertainty, greedy k-center)
  margin      the N most uncertain (suggest with candidates=1: no diversity)
  k-center    greedy k-center over the whole pool from the most uncertain (no uncertainty cut)
  suggest (head space)  as suggest, but the cosine of the embeddings standardized by the head's
              mean and std (the first design; no better than random here)

and the head refitted on seed + N; the accuracy on the test set is averaged over the seeds.

    python benchmarks/bench_suggest.py               # 40 seeds, ~1-2 min on 2 cores
    python benchmarks/bench_suggest.py --seeds 20
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

SIZES = (10, 20, 40)
POOL = 1200
SEED_PER_CLASS = 2


def digit_photos(rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """The digits as 64x64 RGB PIL images (a shift of up to 4 px, contrast 0.7..1), labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    photos = []
    for image in digits.images:
        big = Image.fromarray((image / 16 * 255).astype(np.uint8)).resize((56, 56))
        canvas = Image.new("L", (64, 64))
        canvas.paste(big, tuple(int(v) for v in rng.integers(0, 9, 2)))
        contrast = rng.uniform(0.7, 1.0)
        photos.append(canvas.point(lambda v, c=contrast: int(v * c)).convert("RGB"))
    return photos, digits.target.astype(np.int64)


def embed(photos: list, work: Path) -> np.ndarray:
    """Mean-pooled embeddings of `photos` by the tiny random checkpoint at 32x32, through the
    runner (cached in `work`: the digits and the checkpoint are the same every run)."""
    import torch
    from checkpoints import make_checkpoint

    from vithybrid_cli.model.weights import load_model
    from vithybrid_cli.pipeline.runner import Runner, RunOptions
    from vithybrid_cli.pipeline.tasks import embed_task

    cached = work / f"features-{len(photos)}.npy"
    if cached.exists():
        return np.load(cached)
    torch.manual_seed(0)
    checkpoint = work / "tiny"
    if not (checkpoint / "config.json").exists():
        checkpoint.mkdir(parents=True, exist_ok=True)
        make_checkpoint(checkpoint, "tiny", 0)
    runner = Runner(
        load_model(checkpoint), RunOptions(image_size=(32, 32), interpolate_pos_encoding=True)
    )
    rows = [result.payload for result in runner.run(photos, embed_task("mean"))]
    features = np.stack(rows).astype(np.float32)
    np.save(cached, features)
    return features


def fit(features: np.ndarray, targets: np.ndarray, classes: int):
    """(mean, std, weight, bias): the fit solver on standardized features, C = 1."""
    from vithybrid_cli.pipeline.fit.solver import DEFAULT_C, fit_logistic, standardize_stats

    mean, std = standardize_stats(features)
    weight, bias = fit_logistic((features - mean) / std, targets, classes, DEFAULT_C)
    return mean, std, weight, bias


def probabilities(model, features: np.ndarray) -> np.ndarray:
    from vithybrid_cli.pipeline.fit.solver import predict_proba

    mean, std, weight, bias = model
    return predict_proba((features - mean) / std, weight, bias)


def accuracy(model, features: np.ndarray, targets: np.ndarray) -> float:
    return float((probabilities(model, features).argmax(1) == targets).mean())


def choose(method: str, model, features: np.ndarray, n: int, rng: np.random.Generator) -> list:
    """`n` rows of `features` (the unlabeled pool) to label next, by `method`."""
    from vithybrid_cli.search.suggest import suggest

    if method == "random":
        return rng.choice(len(features), n, replace=False).tolist()
    probs = probabilities(model, features)
    if method == "suggest (head space)":  # tried first: cosine of the standardized embeddings
        standardized = (features - model[0]) / model[1]
        return [pick.row for pick in suggest(standardized, probs, n)]
    candidates = {"suggest": 4, "margin": 1, "k-center": len(features)}[method]
    return [pick.row for pick in suggest(features, probs, n, candidates=candidates)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=40)
    parser.add_argument("--work", type=Path, default=REPO / "benchmarks" / ".cache" / "suggest")
    args = parser.parse_args()

    started = time.perf_counter()
    rng = np.random.default_rng(0)
    photos, targets = digit_photos(rng)
    features = embed(photos, args.work)
    classes = int(targets.max()) + 1
    order = rng.permutation(len(targets))
    pool, test = order[:POOL], order[POOL:]
    print(f"{len(targets)} digits embedded ({features.shape[1]}-d; cached after the first run) in "
          f"{time.perf_counter() - started:.1f} s; pool {len(pool)}, test {len(test)}")  # fmt: skip

    methods = ("random", "suggest", "margin", "k-center", "suggest (head space)")
    scores = {(m, n): [] for m in methods for n in SIZES}
    seed_scores = []
    for seed in range(args.seeds):
        seed_rng = np.random.default_rng(100 + seed)
        labeled = np.concatenate([
            seed_rng.choice(pool[targets[pool] == k], SEED_PER_CLASS, replace=False)
            for k in range(classes)
        ])  # fmt: skip
        rest = np.setdiff1d(pool, labeled)
        model = fit(features[labeled], targets[labeled], classes)
        seed_scores.append(accuracy(model, features[test], targets[test]))
        for n in SIZES:
            for method in methods:
                rows = rest[choose(method, model, features[rest], n, seed_rng)]
                chosen = np.concatenate([labeled, rows])
                refit = fit(features[chosen], targets[chosen], classes)
                scores[method, n].append(accuracy(refit, features[test], targets[test]))

    print(f"\nseed set: {SEED_PER_CLASS} per class ({SEED_PER_CLASS * classes} labels), "
          f"test accuracy {np.mean(seed_scores):.3f}; {args.seeds} seeds\n")  # fmt: skip
    print("| N more labels | " + " | ".join(methods) + " | suggest - random (wins/seeds) |")
    print("|---:|" + "---:|" * len(methods) + "---:|")
    for n in SIZES:
        cells = [f"{np.mean(scores[m, n]):.3f} ± {np.std(scores[m, n]):.3f}" for m in methods]
        gain = np.array(scores["suggest", n]) - np.array(scores["random", n])
        wins = int((gain > 0).sum())
        print(f"| {n} | " + " | ".join(cells) + f" | {gain.mean():+.3f} ({wins}/{args.seeds}) |")
    print(f"\n{time.perf_counter() - started:.1f} s in all")


if __name__ == "__main__":
    main()
