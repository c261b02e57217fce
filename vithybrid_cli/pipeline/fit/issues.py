"""The labels that are probably wrong, and the examples that do not belong: `fit --issues`.

Pure numpy on the embeddings and labels a fit already holds (the logistic regression is
solver.py's, at the C the fit chose):

    label    out-of-fold probabilities (stratified k-fold over every labeled example), then
             confident learning (Northcutt et al. 2021): per class j the threshold t_j is the
             mean out-of-fold probability of j over the examples labeled j; an example's
             confident class is its most probable class among those with p_k >= t_k; counting
             given x confident classes is the confident joint, scaled so each row sums to its
             label's count: C[i][j] estimates how many examples labeled i are truly j. Flagged:
             for each off-diagonal cell, the C[i][j] examples labeled i with the largest
             p_j - p_i (pruning by noise rate), which are also among the sum_{j != i} C[i][j]
             examples labeled i with the lowest p_i (pruning by class), and whose most probable
             class is not i. (cleanlab's find_label_issues(filter_by="both"); its default prunes
             by noise rate alone.) `suggested` is the most probable class of the cells that
             picked it. Most likely wrong first, by the normalized margin
             p_given - max_{k != given} p_k; `score` is its negative,
             max_{k != given} p_k - p_given (in [-1, 1]; higher: more likely wrong).
    outlier  far from every class: the cosine similarity of its standardized embedding to the
             nearest class centroid is an extreme low outlier among all examples' similarities:
             a modified z-score (median and MAD, Iglewicz & Hoaglin) below -OUTLIER_Z.
             `score` is 1 - that similarity; `suggested` is null (no class fits: drop it?).
    leak     a near copy across the training and validation split: cosine similarity of the
             standardized embeddings >= LEAK_COSINE between a validation and a training example
             (it inflates validation accuracy). One issue per validation example, naming its
             nearest training example (`copy_of`); `score` is the cosine.

Issues come label first (by score), then outliers, then leaks, each most likely first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .solver import fit_logistic, predict_proba, standardize_stats

FOLDS = 5
OUTLIER_Z = 3.5  # Iglewicz & Hoaglin's cut-off for the modified z-score
LEAK_COSINE = 0.99


@dataclass(frozen=True)
class Issue:
    """One flagged example; `index` is its row in the features the finder was given."""

    index: int
    kind: str  # "label", "outlier", "leak"
    label: int  # the given label (index)
    suggested: int | None  # the likely label (index); None: none (outlier, leak)
    score: float  # higher: more likely an issue (see the module docstring per kind)
    copy_of: int | None = None  # leak: the training example's row


def stratified_folds(targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per example: per class, a seeded shuffle dealt round the folds."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(targets), dtype=np.int64)
    start = 0  # dealing continues across classes, so small classes do not all land in fold 0
    for label in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == label))
        fold[members] = (start + np.arange(len(members))) % folds
        start += len(members)
    return fold


def out_of_fold_probabilities(
    features: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    c: float,
    folds: int = FOLDS,
    seed: int = 0,
) -> np.ndarray:
    """(n, num_classes): each example's probabilities from a regression that never saw it.

    Each fold is standardized on its own training part, as a fit standardizes its training set.
    """
    folds = max(2, min(folds, int(np.bincount(targets).max())))
    fold = stratified_folds(targets, folds, seed)
    probabilities = np.zeros((len(targets), num_classes))
    for held in range(folds):
        test, train = fold == held, fold != held
        if not test.any():
            continue
        mean, std = standardize_stats(features[train])
        weight, bias = fit_logistic((features[train] - mean) / std, targets[train], num_classes, c)
        probabilities[test] = predict_proba((features[test] - mean) / std, weight, bias)
    return probabilities


def confident_joint(probabilities: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(K, K) counts [given][confident]: each example's confident class is its most probable
    class among those reaching their threshold t_j (the mean probability of j over the examples
    labeled j); examples with none are not counted."""
    num_classes = probabilities.shape[1]
    thresholds = np.array([
        probabilities[targets == j, j].mean() if (targets == j).any() else 1.0
        for j in range(num_classes)
    ])  # fmt: skip
    above = probabilities >= thresholds
    confident = np.where(above, probabilities, -np.inf).argmax(axis=1)
    counted = above.any(axis=1)
    joint = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(joint, (targets[counted], confident[counted]), 1)
    return joint


def calibrated_counts(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """The confident joint scaled so each row sums to that label's count, rounded keeping the
    row totals (largest remainders): how many examples of each given label are truly each
    class."""
    rows = joint.sum(axis=1, keepdims=True)
    scaled = np.where(rows > 0, joint / np.maximum(rows, 1) * label_counts[:, None], 0.0)
    scaled[rows[:, 0] == 0] = np.diag(label_counts)[rows[:, 0] == 0]  # no evidence: all clean
    counts = np.floor(scaled).astype(np.int64)
    for k in range(len(counts)):
        short = int(label_counts[k] - counts[k].sum())
        if short > 0:
            counts[k, np.argsort(-(scaled[k] - counts[k]), kind="stable")[:short]] += 1
    return counts


def label_issues(probabilities: np.ndarray, targets: np.ndarray) -> list[Issue]:
    """The confident-learning flags (module docstring), most likely wrong first."""
    n, num_classes = probabilities.shape
    rows = np.arange(n)
    label_counts = np.bincount(targets, minlength=num_classes)
    counts = calibrated_counts(confident_joint(probabilities, targets), label_counts)
    by_noise = np.zeros(n, dtype=bool)  # prune by noise rate
    by_class = np.zeros(n, dtype=bool)  # prune by class
    suggested = np.full(n, -1)
    best = np.full(n, -np.inf)
    for k in range(num_classes):
        members = np.flatnonzero(targets == k)
        if len(members) <= 1:  # a class is never emptied
            continue
        for j in range(num_classes):
            if j == k or counts[k, j] <= 0:
                continue
            margin = probabilities[members, j] - probabilities[members, k]
            picked = members[np.argsort(-margin, kind="stable")[: counts[k, j]]]
            by_noise[picked] = True
            better = probabilities[picked, j] > best[picked]
            suggested[picked[better]], best[picked[better]] = j, probabilities[picked[better], j]
        noisy = int(label_counts[k] - counts[k, k])
        if noisy > 0:
            by_class[members[np.argsort(probabilities[members, k], kind="stable")[:noisy]]] = True
    given = probabilities[rows, targets]
    flagged = by_noise & by_class & (probabilities.argmax(axis=1) != targets)
    others = probabilities.copy()
    others[rows, targets] = -np.inf
    margin = given - others.max(axis=1)  # the normalized margin
    issues = [
        Issue(int(i), "label", int(targets[i]), int(suggested[i]), float(-margin[i]))
        for i in np.flatnonzero(flagged)
    ]
    issues.sort(key=lambda issue: (-issue.score, issue.index))
    return issues


def unit_rows(features: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.where(norms > 1e-12, norms, 1.0)


def outlier_issues(
    features: np.ndarray, targets: np.ndarray, num_classes: int, z: float = OUTLIER_Z
) -> list[Issue]:
    """Examples whose similarity to the nearest class centroid is an extreme low outlier."""
    mean, std = standardize_stats(features)
    unit = unit_rows((features - mean) / std)
    centroids = np.zeros((num_classes, unit.shape[1]))
    for j in range(num_classes):
        if (targets == j).any():
            centroids[j] = unit[targets == j].mean(axis=0)
    nearest = (unit @ unit_rows(centroids).T).max(axis=1)
    median = np.median(nearest)
    mad = np.median(np.abs(nearest - median))
    if mad <= 1e-12:
        return []
    modified_z = 0.6745 * (nearest - median) / mad
    issues = [
        Issue(int(i), "outlier", int(targets[i]), None, float(1.0 - nearest[i]))
        for i in np.flatnonzero(modified_z < -z)
    ]
    issues.sort(key=lambda issue: (-issue.score, issue.index))
    return issues


def leak_issues(
    features: np.ndarray,
    targets: np.ndarray,
    train_at: np.ndarray,
    val_at: np.ndarray,
    threshold: float = LEAK_COSINE,
) -> list[Issue]:
    """Validation examples with a near copy (cosine >= threshold) among the training ones."""
    if not len(train_at) or not len(val_at):
        return []
    mean, std = standardize_stats(features[train_at])
    unit = unit_rows((features - mean) / std)
    train_unit = unit[train_at]
    issues = []
    for start in range(0, len(val_at), 1024):  # bounded memory: 1024 x n_train at a time
        chunk = val_at[start : start + 1024]
        similarity = unit[chunk] @ train_unit.T
        best = similarity.argmax(axis=1)
        for row, i in enumerate(chunk):
            cosine = float(similarity[row, best[row]])
            if cosine >= threshold:
                copy = int(train_at[best[row]])
                issues.append(Issue(int(i), "leak", int(targets[i]), None, cosine, copy))
    issues.sort(key=lambda issue: (-issue.score, issue.index))
    return issues


def find_issues(
    features: np.ndarray,
    targets: np.ndarray,
    num_classes: int,
    c: float,
    train_at: np.ndarray,
    val_at: np.ndarray,
    seed: int = 0,
) -> list[Issue]:
    """Every issue over all labeled examples (`train_at`/`val_at`: rows of each split)."""
    features = np.asarray(features, dtype=np.float64)
    probabilities = out_of_fold_probabilities(features, targets, num_classes, c, seed=seed)
    return (
        label_issues(probabilities, targets)
        + outlier_issues(features, targets, num_classes)
        + leak_issues(features, targets, train_at, val_at)
    )
