"""Multinomial logistic regression for a head, and its metrics, in numpy and torch float64.

    standardize -> L2-regularized (scikit-learn's C) softmax regression, full-batch L-BFGS
    -> probabilities, log-loss, per-class precision/recall/F1 and the confusion matrix

C_GRID is the C a fit chooses from on its validation split (fit_choosing_c); DEFAULT_C where
there is none.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
DEFAULT_C = 1.0  # when there is no validation split to choose on


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


def fit_choosing_c(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    num_classes: int,
    c: float | None,
) -> tuple[float, np.ndarray, np.ndarray, list[tuple[float, float, float]]]:
    """(C, weight, bias, [(C, validation accuracy, validation log-loss), ...]).

    With `c` given, or no validation examples to choose on (then DEFAULT_C), one fit. Otherwise
    one fit per C in C_GRID, the best validation accuracy winning (ties: the lower log-loss).
    """
    c_scores: list[tuple[float, float, float]] = []
    if c is not None or len(val_y) == 0:
        chosen = c if c is not None else DEFAULT_C
        weight, bias = fit_logistic(train_x, train_y, num_classes, chosen)
        if len(val_y):
            probabilities = predict_proba(val_x, weight, bias)
            accuracy = float((probabilities.argmax(1) == val_y).mean())
            c_scores.append((chosen, accuracy, log_loss(probabilities, val_y)))
        return chosen, weight, bias, c_scores
    best = None
    init = None
    for candidate in C_GRID:  # strongest regularization first; each warm-starts the next
        weight, bias = fit_logistic(train_x, train_y, num_classes, candidate, init=init)
        init = (weight, bias)
        probabilities = predict_proba(val_x, weight, bias)
        accuracy = float((probabilities.argmax(1) == val_y).mean())
        loss = log_loss(probabilities, val_y)
        c_scores.append((candidate, accuracy, loss))
        if best is None or (accuracy, -loss) > (best[1], -best[2]):
            best = (candidate, accuracy, loss, weight, bias)
    chosen, _, _, weight, bias = best
    return chosen, weight, bias, c_scores
