"""Binary classification metrics in plain NumPy.

Labels are 0/1 (1 = positive); scores are P(positive) in [0, 1]. Precision, recall and F1
are 0.0 when undefined (no predicted / actual positives), as scikit-learn's
``zero_division=0``. `roc_auc` raises when only one class is present; `evaluate` reports
NaN for it instead so that a tiny holdout does not abort a run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

LOG_LOSS_EPS = 1e-15

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def _labels(values: ArrayLike, name: str) -> IntArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isin(array, (0, 1)).all():
        raise ValueError(f"{name} must contain only 0 and 1")
    return array.astype(np.int64)


def _scores(values: ArrayLike, name: str, *, probabilities: bool) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} must be finite")
    if probabilities and ((array < 0).any() or (array > 1).any()):
        raise ValueError(f"{name} must be probabilities in [0, 1]")
    return array


def _same_length(a: npt.NDArray[Any], b: npt.NDArray[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"length mismatch: {len(a)} labels vs {len(b)} predictions")


def _confusion(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[int, int, int, int]:
    truth, predicted = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    _same_length(truth, predicted)
    true_positive = int(np.sum((truth == 1) & (predicted == 1)))
    false_positive = int(np.sum((truth == 0) & (predicted == 1)))
    false_negative = int(np.sum((truth == 1) & (predicted == 0)))
    true_negative = int(np.sum((truth == 0) & (predicted == 0)))
    return true_positive, false_positive, false_negative, true_negative


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    tp, fp, fn, tn = _confusion(y_true, y_pred)
    return (tp + tn) / (tp + fp + fn + tn)


def precision(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    tp, fp, _, _ = _confusion(y_true, y_pred)
    return tp / (tp + fp) if tp + fp else 0.0


def recall(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    tp, _, fn, _ = _confusion(y_true, y_pred)
    return tp / (tp + fn) if tp + fn else 0.0


def f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    tp, fp, fn, _ = _confusion(y_true, y_pred)
    # 2PR/(P+R) simplified; 0 when there is no true positive.
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def average_ranks(values: ArrayLike) -> FloatArray:
    """1-based ranks of `values`, ties sharing the mean of the ranks they span."""
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="mergesort")
    sorted_values = array[order]
    # Start index of each run of equal values.
    is_start = np.empty(len(array), dtype=bool)
    is_start[:1] = True
    is_start[1:] = sorted_values[1:] != sorted_values[:-1]
    starts = np.flatnonzero(is_start)
    ends = np.append(starts[1:], len(array))
    run_ranks = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(array), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U): the probability that a random
    positive scores above a random negative, ties counting one half."""
    truth = _labels(y_true, "y_true")
    score = _scores(scores, "scores", probabilities=False)
    _same_length(truth, score)
    n_positive = int(truth.sum())
    n_negative = len(truth) - n_positive
    if n_positive == 0 or n_negative == 0:
        raise ValueError("roc_auc is undefined with only one class in y_true")
    positive_rank_sum = float(average_ranks(score)[truth == 1].sum())
    u_statistic = positive_rank_sum - n_positive * (n_positive + 1) / 2.0
    return u_statistic / (n_positive * n_negative)


def log_loss(y_true: ArrayLike, probabilities: ArrayLike, eps: float = LOG_LOSS_EPS) -> float:
    """Mean negative log-likelihood; the probability given to the true class is clipped to
    [eps, 1] so a confident mistake costs -log(eps), not infinity."""
    truth = _labels(y_true, "y_true")
    p = _scores(probabilities, "probabilities", probabilities=True)
    _same_length(truth, p)
    # Clip the likelihood itself, not p: 1 - (1 - eps) is not eps in floating point.
    likelihood = np.where(truth == 1, p, 1.0 - p)
    return float(-np.mean(np.log(np.clip(likelihood, eps, 1.0))))


def evaluate(
    y_true: ArrayLike, probabilities: ArrayLike, threshold: float = 0.5
) -> dict[str, float]:
    """accuracy, precision, recall, f1 (labels = probability >= threshold), roc_auc (NaN
    when only one class is present) and log_loss."""
    truth = _labels(y_true, "y_true")
    p = _scores(probabilities, "probabilities", probabilities=True)
    _same_length(truth, p)
    predicted = (p >= threshold).astype(np.int64)
    try:
        auc = roc_auc(truth, p)
    except ValueError:
        auc = float("nan")
    return {
        "accuracy": accuracy(truth, predicted),
        "precision": precision(truth, predicted),
        "recall": recall(truth, predicted),
        "f1": f1(truth, predicted),
        "roc_auc": auc,
        "log_loss": log_loss(truth, p),
    }
