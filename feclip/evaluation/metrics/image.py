"""Image-level metrics: AUROC, AP, F1, TPR at FPR, the HDMAP protocols and the ROC curve (definitions in
`feclip.evaluation.metrics`). This is the project's one ROC/AUROC: the plots and the synthetic-data
statistics use it too."""

from __future__ import annotations

import numpy as np

from feclip.evaluation.metrics.checks import (
    MetricsError,
    condition_array,
    defined,
    fraction,
    label_array,
    score_array,
)


def auroc_of(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC of scores (N,) against positive (N,) bool, ties 1/2; both classes present."""
    negatives = scores[~positive]
    negatives.sort()
    hits = scores[positive]
    below = int(np.searchsorted(negatives, hits, side="left").sum())
    below_or_tied = int(np.searchsorted(negatives, hits, side="right").sum())
    return (below + below_or_tied) / (2 * hits.size * negatives.size)


def auroc(scores, labels) -> float:
    """AUROC of scores (N,) against labels (N,) 0 good / 1 fault (ties 1/2); NaN + warning with one class."""
    values = score_array(scores, "scores")
    return _subset_auroc("all", values, label_array(labels, "labels", values.size))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, float]:
    """(fpr, tpr, auroc): the ROC operating points of scores (N,) against labels (N,) 0/1, from (0, 0) over
    the distinct thresholds (descending, ties as one point) to (1, 1); auroc is their trapezoid area (= the
    Mann-Whitney AUROC). A subset with one class only gives the chance line and NaN, without a warning."""
    values = score_array(scores, "scores")
    fault = label_array(labels, "labels", values.size)
    if fault.all() or not fault.any():
        return np.array([0.0, 1.0]), np.array([0.0, 1.0]), float("nan")
    tp, fp = _curve(values, fault)
    return np.r_[0.0, fp / fp[-1]], np.r_[0.0, tp / tp[-1]], auroc_of(values, fault)


def _subset_auroc(subset: str, scores: np.ndarray, positive: np.ndarray) -> float:
    return auroc_of(scores, positive) if defined(subset, "AUROC", positive) else float("nan")


def _curve(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tp (T,), fp (T,)): faults / goods with score >= t for the T distinct scores t, descending."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    tp = np.cumsum(positive[order])[last]
    return tp, last + 1 - tp


def _average_precision(tp: np.ndarray, fp: np.ndarray) -> float:
    precision, recall = tp / (tp + fp), tp / tp[-1]
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _tpr_at_fpr(tp: np.ndarray, fp: np.ndarray, max_fpr: float) -> float:
    allowed = fp / fp[-1] <= max_fpr
    return float(np.max(tp[allowed], initial=0) / tp[-1])


def ranking_metrics(subset: str, scores: np.ndarray, fault: np.ndarray) -> dict[str, float]:
    """auroc, ap, f1_max, tpr_at_fpr1 of scores (N,) against fault (N,) bool."""
    if not defined(subset, "auroc, ap, f1_max and tpr_at_fpr1", fault):
        return dict.fromkeys(("auroc", "ap", "f1_max", "tpr_at_fpr1"), float("nan"))
    tp, fp = _curve(scores, fault)
    return {
        "auroc": auroc_of(scores, fault),
        "ap": _average_precision(tp, fp),
        "f1_max": float(np.max(2 * tp / (tp + fp + tp[-1]))),
        "tpr_at_fpr1": _tpr_at_fpr(tp, fp, 0.01),
    }


def threshold_accuracies(name: str, predicted: np.ndarray, fault: np.ndarray, cold: np.ndarray) -> dict:
    """acc_<name>, acc_<name>_cold, acc_<name>_warm of predictions (N,) bool."""
    correct = predicted == fault
    return {
        f"acc_{name}": fraction("all", correct),
        f"acc_{name}_cold": fraction("cold", correct[cold]),
        f"acc_{name}_warm": fraction("warm", correct[~cold]),
    }


def _oracle_threshold(scores: np.ndarray, fault: np.ndarray) -> float:
    """The first of the 0th..100th test-score percentiles with the best accuracy of `score >= t`."""
    candidates = np.percentile(scores, np.arange(101))
    accuracy = ((scores[None, :] >= candidates[:, None]) == fault[None, :]).mean(axis=1)
    return float(candidates[int(np.argmax(accuracy))])


def hdmap_metrics(
    scores, labels, condition, val_scores=None, val_percentile: float = 99.0
) -> dict[str, float]:
    """The named HDMAP protocol metrics (docs/data.md §8), definitions in the module docstring.

    scores: (N,) test image scores; labels: (N,) 0 good / 1 fault; condition: (N,) 'cold' | 'warm';
    val_scores: (M,) scores of held-out normal images or None (then acc_val*, thr_val are NaN);
    val_percentile: in [0, 100].
    Keys: auroc, ap, auroc_cold (cold fault vs cold good), auroc_warm, auroc_cross (cold fault vs warm good),
    auroc_cross2 (warm fault vs cold good), acc_oracle(+_cold, _warm), thr_oracle, acc_val(+_cold, _warm),
    thr_val, f1_max, tpr_at_fpr1. Thresholds are in score units, the rest fractions in [0, 1].
    """
    scores = score_array(scores, "scores")
    fault = label_array(labels, "labels", scores.size)
    cold = condition_array(condition, "condition", scores.size)
    metrics = ranking_metrics("all", scores, fault)
    subsets = {
        "cold": cold,
        "warm": ~cold,
        "cross": (cold & fault) | (~cold & ~fault),
        "cross2": (~cold & fault) | (cold & ~fault),
    }
    for name, rows in subsets.items():
        metrics[f"auroc_{name}"] = _subset_auroc(name, scores[rows], fault[rows])
    metrics["thr_oracle"] = _oracle_threshold(scores, fault)
    metrics.update(threshold_accuracies("oracle", scores >= metrics["thr_oracle"], fault, cold))
    metrics["thr_val"] = val_threshold(val_scores, val_percentile)
    if val_scores is None:
        metrics.update(dict.fromkeys(("acc_val", "acc_val_cold", "acc_val_warm"), float("nan")))
    else:
        metrics.update(threshold_accuracies("val", scores > metrics["thr_val"], fault, cold))
    return metrics


def val_threshold(val_scores, val_percentile: float) -> float:
    """The `val_percentile` percentile (numpy linear) of val_scores (M,); NaN when val_scores is None."""
    if not 0.0 <= val_percentile <= 100.0:
        raise MetricsError(f"val_percentile: expected a value in [0, 100], got {val_percentile}")
    if val_scores is None:
        return float("nan")
    values = score_array(val_scores, "val_scores")
    if values.size == 0:
        raise MetricsError("val_scores: expected at least one held-out normal score, got none")
    return float(np.percentile(values, val_percentile))
