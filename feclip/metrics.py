"""Evaluation metrics: the HDMAP protocols, the paper's benchmark metrics and the cold/warm gate accuracy.

Conventions shared by every function here:
- Higher score = more anomalous; label 1 = fault (anomalous), 0 = good. Masks are {0, 1} per pixel.
- Every rate (AUROC, AP, accuracy, F1, TPR, PRO) is a fraction in [0, 1]; reports multiply by 100.
- Inputs may be numpy arrays, lists or torch tensors (any device; float16/bfloat16 maps become float32).
- A metric that is undefined on its subset (one class only, or no rows) is NaN, and `warnings.warn` names the
  subset and the metric; it never raises. Bad input (mismatched lengths, labels outside {0, 1}, unknown
  conditions, non-finite scores) raises `MetricsError` (a ValueError) with a one-line message.

Definitions (n_f faults, n_g goods; "predict fault at t" means score >= t unless stated otherwise):
- AUROC = P(s_fault > s_good) + 1/2 P(s_fault == s_good) over all fault/good pairs (Mann-Whitney), which is
  sklearn's trapezoidal ROC area with ties as one threshold (average rank). Exact integer counts.
- AP = sum over distinct thresholds t (descending) of (R(t) - R(t_prev)) * P(t): sklearn's step-wise average
  precision, ties as one threshold.
- f1_max = max over distinct thresholds t of F1 = 2 TP / (2 TP + FP + FN).
- tpr_at_fpr1 = max TPR over the ROC operating points (distinct thresholds plus "nothing is a fault") whose
  FPR = FP / n_g <= 0.01; no interpolation between points (with 1000 goods: at most 10 false alarms).
- acc_oracle (the user's PatchCore protocol, baselines.md §1): candidate thresholds = the 0th, 1st, ..., 100th
  percentiles (numpy linear interpolation) of the test scores; fault iff score >= t; keep the first candidate
  with the best overall accuracy (`thr_oracle`); `_cold` / `_warm` apply that same threshold to the subsets.
  It sees the test labels: optimistic, always reported as oracle. (The top candidate is the max score, so
  at least one image is always flagged, exactly as in the user's script.)
- acc_val: thr_val = the `val_percentile` percentile (numpy linear) of held-out normal scores; fault iff
  score > thr_val (strict: at the 99th percentile about 1% of held-out normals are flagged).

Implementation note: the metrics are computed here in numpy rather than with torchmetrics, because
torchmetrics' binary functional API applies a sigmoid to scores outside [0, 1] (raw distances or logits then
saturate in float32 into false ties: AUROC 0.5 for scores 20..23) and accumulates counts in float32.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import ndimage

from feclip.errors import FeclipError

CONDITIONS = ("cold", "warm")
BENCHMARK_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pro")
# Pixels sampled (with a fixed seed) to place PRO thresholds; maps processed this many pixels at a time.
PRO_SAMPLE_PIXELS = 2**22
PRO_LEVELS = 1000  # default n_levels of pro_score
PRO_CHUNK_PIXELS = 2**22


class MetricsError(FeclipError):
    """Bad input to a metric function."""


# ----------------------------------------------------------------------------------------------- validation
def _numpy(values) -> np.ndarray:
    """A numpy view/copy of a tensor (detached, on CPU; half precision widened to float32) or array-like."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def _finite(array: np.ndarray, name: str) -> None:
    if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
        raise MetricsError(f"{name}: expected finite values, found NaN or inf")


def _scores(values, name: str) -> np.ndarray:
    """(N,) float64 finite scores."""
    array = _numpy(values)
    if array.ndim != 1 or array.dtype.kind not in "biuf":
        raise MetricsError(
            f"{name}: expected a 1-D numeric array, got shape {array.shape} dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    _finite(array, name)
    return array


def _labels(values, name: str, n: int) -> np.ndarray:
    """(n,) bool, True = fault, from 0/1 labels."""
    array = _numpy(values)
    if array.shape != (n,):
        raise MetricsError(f"{name}: expected shape ({n},) to match the scores, got {array.shape}")
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        raise MetricsError(f"{name}: expected labels 0 (good) or 1 (fault), got {array[bad][0]!r}")
    return array.astype(bool)


def _conditions(values, name: str, n: int | None) -> np.ndarray:
    """(n,) bool, True = cold, from 'cold' / 'warm' strings; n=None accepts any 1-D length."""
    array = np.asarray(values, dtype=object)
    if array.ndim != 1 or n not in (None, array.size):
        raise MetricsError(f"{name}: expected shape ({n or 'N'},), got {array.shape}")
    unknown = sorted({str(value) for value in array.tolist()} - set(CONDITIONS))
    if unknown:
        raise MetricsError(f"{name}: unknown value(s) {unknown[:3]}; expected 'cold' or 'warm'")
    return array == "cold"


def _maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """maps: (N, H, W) float (>= 32-bit, finite); masks: (N, H, W) {0, 1} -> bool (True = anomalous pixel)."""
    maps, masks = _numpy(maps), _numpy(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise MetricsError(f"maps/masks: expected equal (N, H, W) shapes, got {maps.shape} and {masks.shape}")
    if maps.dtype.kind != "f" or maps.itemsize < 4:
        maps = maps.astype(np.float32)
    _finite(maps, "maps")
    positive = masks.astype(bool, copy=False)
    if masks.dtype != bool and not np.array_equal(positive, masks):
        raise MetricsError("masks: expected values 0 or 1 only")
    return maps, positive


# -------------------------------------------------------------------------------------------- image level
def _defined(subset: str, metric: str, positive: np.ndarray) -> bool:
    """True when `positive` (n,) bool holds both classes; otherwise warn that `metric` is NaN on `subset`."""
    n, n_pos = positive.size, int(positive.sum())
    if 0 < n_pos < n:
        return True
    what = "is empty" if n == 0 else f"has only {'fault' if n_pos else 'good'} samples (n={n})"
    warnings.warn(f"metrics: subset '{subset}' {what}; {metric} set to NaN", stacklevel=4)
    return False


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Mann-Whitney AUROC of scores (N,) against positive (N,) bool, ties 1/2; both classes present."""
    negatives = scores[~positive]
    negatives.sort()
    hits = scores[positive]
    below = int(np.searchsorted(negatives, hits, side="left").sum())
    below_or_tied = int(np.searchsorted(negatives, hits, side="right").sum())
    return (below + below_or_tied) / (2 * hits.size * negatives.size)


def _subset_auroc(subset: str, scores: np.ndarray, positive: np.ndarray) -> float:
    return _auroc(scores, positive) if _defined(subset, "AUROC", positive) else float("nan")


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


def _ranking_metrics(subset: str, scores: np.ndarray, fault: np.ndarray) -> dict[str, float]:
    """auroc, ap, f1_max, tpr_at_fpr1 of scores (N,) against fault (N,) bool."""
    if not _defined(subset, "auroc, ap, f1_max and tpr_at_fpr1", fault):
        return dict.fromkeys(("auroc", "ap", "f1_max", "tpr_at_fpr1"), float("nan"))
    tp, fp = _curve(scores, fault)
    return {
        "auroc": _auroc(scores, fault),
        "ap": _average_precision(tp, fp),
        "f1_max": float(np.max(2 * tp / (tp + fp + tp[-1]))),
        "tpr_at_fpr1": _tpr_at_fpr(tp, fp, 0.01),
    }


def _fraction(subset: str, correct: np.ndarray) -> float:
    """Mean of correct (n,) bool; NaN with a warning when the subset is empty."""
    if correct.size == 0:
        warnings.warn(f"metrics: subset '{subset}' is empty; accuracy set to NaN", stacklevel=3)
        return float("nan")
    return float(np.mean(correct))


def _threshold_accuracies(name: str, predicted: np.ndarray, fault: np.ndarray, cold: np.ndarray) -> dict:
    """acc_<name>, acc_<name>_cold, acc_<name>_warm of predictions (N,) bool."""
    correct = predicted == fault
    return {
        f"acc_{name}": _fraction("all", correct),
        f"acc_{name}_cold": _fraction("cold", correct[cold]),
        f"acc_{name}_warm": _fraction("warm", correct[~cold]),
    }


def _oracle_threshold(scores: np.ndarray, fault: np.ndarray) -> float:
    """The first of the 0th..100th test-score percentiles with the best accuracy of `score >= t`."""
    candidates = np.percentile(scores, np.arange(101))
    accuracy = ((scores[None, :] >= candidates[:, None]) == fault[None, :]).mean(axis=1)
    return float(candidates[int(np.argmax(accuracy))])


def hdmap_metrics(
    scores, labels, condition, val_scores=None, val_percentile: float = 99.0
) -> dict[str, float]:
    """The named HDMAP protocol metrics (architecture.md), definitions in the module docstring.

    scores: (N,) test image scores; labels: (N,) 0 good / 1 fault; condition: (N,) 'cold' | 'warm';
    val_scores: (M,) scores of held-out normal images or None (then acc_val*, thr_val are NaN);
    val_percentile: in [0, 100].
    Keys: auroc, ap, auroc_cold (cold fault vs cold good), auroc_warm, auroc_cross (cold fault vs warm good),
    auroc_cross2 (warm fault vs cold good), acc_oracle(+_cold, _warm), thr_oracle, acc_val(+_cold, _warm),
    thr_val, f1_max, tpr_at_fpr1. Thresholds are in score units, the rest fractions in [0, 1].
    """
    scores = _scores(scores, "scores")
    fault = _labels(labels, "labels", scores.size)
    cold = _conditions(condition, "condition", scores.size)
    metrics = _ranking_metrics("all", scores, fault)
    subsets = {
        "cold": cold,
        "warm": ~cold,
        "cross": (cold & fault) | (~cold & ~fault),
        "cross2": (~cold & fault) | (cold & ~fault),
    }
    for name, rows in subsets.items():
        metrics[f"auroc_{name}"] = _subset_auroc(name, scores[rows], fault[rows])
    metrics["thr_oracle"] = _oracle_threshold(scores, fault)
    metrics.update(_threshold_accuracies("oracle", scores >= metrics["thr_oracle"], fault, cold))
    metrics["thr_val"] = _val_threshold(val_scores, val_percentile)
    if val_scores is None:
        metrics.update(dict.fromkeys(("acc_val", "acc_val_cold", "acc_val_warm"), float("nan")))
    else:
        metrics.update(_threshold_accuracies("val", scores > metrics["thr_val"], fault, cold))
    return metrics


def _val_threshold(val_scores, val_percentile: float) -> float:
    """The `val_percentile` percentile (numpy linear) of val_scores (M,); NaN when val_scores is None."""
    if not 0.0 <= val_percentile <= 100.0:
        raise MetricsError(f"val_percentile: expected a value in [0, 100], got {val_percentile}")
    if val_scores is None:
        return float("nan")
    values = _scores(val_scores, "val_scores")
    if values.size == 0:
        raise MetricsError("val_scores: expected at least one held-out normal score, got none")
    return float(np.percentile(values, val_percentile))


# -------------------------------------------------------------------------------------------- pixel level
def _pixel_auroc(subset: str, maps: np.ndarray, positive: np.ndarray) -> float:
    return (
        _auroc(maps.ravel(), positive.ravel()) if _defined(subset, "pixel AUROC", positive) else float("nan")
    )


def pixel_auroc(maps, masks) -> float:
    """AUROC over all pixels of all images (exact, ties 1/2); maps, masks: (N, H, W), normal images all-zero.

    Memory: one sorted copy of the normal pixels and two integer arrays the size of the anomalous pixels.
    """
    maps, positive = _maps_and_masks(maps, masks)
    return _pixel_auroc("all pixels", maps, positive)


def _pro_levels(maps: np.ndarray, positive: np.ndarray, max_fpr: float, n_levels: int) -> np.ndarray:
    """Ascending thresholds for the PRO curve: all distinct values when there are few, else quantiles."""
    values, hits = maps.reshape(-1), positive.reshape(-1)
    if values.size > PRO_SAMPLE_PIXELS:
        rows = np.random.default_rng(0).integers(0, values.size, PRO_SAMPLE_PIXELS)
        values, hits = values[rows], hits[rows]
    distinct = np.unique(values)
    if distinct.size <= 2 * n_levels:
        return distinct
    parts = []
    if (~hits).any():
        parts.append(np.quantile(values[~hits], 1.0 - np.linspace(0.0, max_fpr, n_levels)))
    if hits.any():
        parts.append(np.quantile(values[hits], np.linspace(0.0, 1.0, n_levels)))
    return np.unique(np.concatenate(parts))


def _pro_curve(maps: np.ndarray, positive: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, pro), each (L + 2,), ascending: threshold +inf, then levels (L,) descending, then -inf.

    A pixel is predicted anomalous at threshold t iff map >= t. Regions: 8-connected components of each mask.
    """
    connect = np.zeros((3, 3, 3), dtype=bool)
    connect[1] = True  # 8-connectivity inside a map, none across maps
    false_pos = np.zeros(levels.size + 1, dtype=np.int64)  # per bin = number of levels <= pixel value
    overlap = np.zeros(levels.size + 1)  # per bin: sum over anomalous pixels of 1 / |their region|
    n_regions = 0
    step = max(1, PRO_CHUNK_PIXELS // positive[0].size)
    for start in range(0, len(maps), step):
        hits = positive[start : start + step]
        regions, count = ndimage.label(hits, structure=connect)
        bins = np.searchsorted(levels, maps[start : start + step], side="right")
        false_pos += np.bincount(bins[~hits], minlength=levels.size + 1)
        weights = 1.0 / np.bincount(regions.ravel())[regions[hits]]
        overlap += np.bincount(bins[hits], weights=weights, minlength=levels.size + 1)
        n_regions += count
    # at levels[j] the predicted pixels are those in bins j + 1 .. L: reverse cumulative sums
    fpr = np.r_[0.0, np.cumsum(false_pos[::-1]) / false_pos.sum()]
    pro = np.r_[0.0, np.cumsum(overlap[::-1]) / n_regions]
    return fpr, pro


def _normalized_area(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float:
    """Trapezoid area under pro(fpr) over [0, max_fpr] / max_fpr; pro interpolated linearly at max_fpr."""
    end = int(np.searchsorted(fpr, max_fpr, side="right"))  # fpr[0] = 0 <= max_fpr < fpr[end]
    x, y = fpr[:end], pro[:end]
    if end < fpr.size:
        fraction = (max_fpr - x[-1]) / (fpr[end] - x[-1])
        x, y = np.r_[x, max_fpr], np.r_[y, y[-1] + fraction * (pro[end] - y[-1])]
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / max_fpr)


def _pro(subset: str, maps: np.ndarray, positive: np.ndarray, max_fpr: float, n_levels: int) -> float:
    if not _defined(subset, "PRO", positive):
        return float("nan")
    levels = _pro_levels(maps, positive, max_fpr, n_levels)
    return _normalized_area(*_pro_curve(maps, positive, levels), max_fpr)


def pro_score(maps, masks, max_fpr: float = 0.3, n_levels: int = PRO_LEVELS) -> float:
    """Per-region overlap (Bergmann et al., MVTec AD) integrated over FPR in [0, max_fpr], divided by max_fpr.

    maps, masks: (N, H, W); normal images have all-zero masks. At a threshold t (anomalous iff map >= t):
    PRO(t) = mean over all ground-truth regions of all images (8-connected components of each mask) of
    |region ∩ prediction| / |region| -- regions count equally, whatever their size; FPR(t) = predicted normal
    pixels / all normal pixels of all images. The curve starts at (0, 0) (t = +inf) and ends at (1, 1); its
    trapezoid area up to max_fpr (PRO interpolated linearly at max_fpr) is divided by max_fpr. Ties are one
    threshold, so a constant map gives the diagonal: max_fpr / 2 (0.15 at the default); a perfect map gives 1.

    Approximation: the thresholds are all distinct map values when there are at most 2 * n_levels of them (and
    at most PRO_SAMPLE_PIXELS pixels): then the result is exact. Otherwise they are n_levels quantiles of the
    normal pixels evenly spaced in FPR over [0, max_fpr] plus n_levels quantiles of the anomalous pixels,
    estimated on PRO_SAMPLE_PIXELS pixels drawn with a fixed seed. Every point of the computed curve is a
    point of the exact curve; for a monotone curve the trapezoid error is at most half the sum of
    dFPR * dPRO over consecutive points, divided by max_fpr (of order 1 / n_levels at worst). The maps are
    binned chunk by chunk (PRO_CHUNK_PIXELS pixels), so memory stays bounded for 2000 maps of 336 x 336.
    """
    if not 0.0 < max_fpr <= 1.0:
        raise MetricsError(f"max_fpr: expected a value in (0, 1], got {max_fpr}")
    maps, positive = _maps_and_masks(maps, masks)
    return _pro("all pixels", maps, positive, max_fpr, n_levels)


# ------------------------------------------------------------------------------------- paper benchmarks
def benchmark_metrics(
    image_scores, labels, maps, masks, categories, max_fpr: float = 0.3
) -> dict[str, float]:
    """Per-category metrics and their macro means (the paper's protocol: mean over categories, never pooled).

    image_scores: (N,); labels: (N,) 0/1; maps, masks: (N, H, W); categories: (N,) names.
    Keys: "<category>/image_auroc", "/image_ap", "/pixel_auroc", "/pro" for every category, and image_auroc,
    image_ap, pixel_auroc, pro = the plain mean over categories (NaN if any category's value is NaN).
    """
    scores = _scores(image_scores, "image_scores")
    fault = _labels(labels, "labels", scores.size)
    maps, positive = _maps_and_masks(maps, masks)
    names = np.asarray(categories).astype(str)
    if len(maps) != scores.size or names.shape != (scores.size,):
        raise MetricsError(
            f"maps/categories: expected {scores.size} of each (one per image score), "
            f"got {len(maps)} maps and categories of shape {names.shape}"
        )
    metrics: dict[str, float] = {}
    for category in sorted(set(names.tolist())):
        rows = names == category
        ranking = _ranking_metrics(category, scores[rows], fault[rows])
        metrics[f"{category}/image_auroc"] = ranking["auroc"]
        metrics[f"{category}/image_ap"] = ranking["ap"]
        metrics[f"{category}/pixel_auroc"] = _pixel_auroc(category, maps[rows], positive[rows])
        metrics[f"{category}/pro"] = _pro(category, maps[rows], positive[rows], max_fpr, PRO_LEVELS)
    for name in BENCHMARK_METRICS:
        metrics[name] = float(np.mean([value for key, value in metrics.items() if key.endswith(f"/{name}")]))
    return metrics


# ------------------------------------------------------------------------------------------------ gating
def gate_accuracy(pred, truth, labels) -> dict[str, float]:
    """Fraction of images whose gate decision equals the true condition, overall and per (label, condition).

    pred, truth: (N,) 'cold' | 'warm'; labels: (N,) 0 good / 1 fault. Keys: gate_acc, gate_acc_good_cold,
    gate_acc_good_warm, gate_acc_fault_cold, gate_acc_fault_warm (grouped by the true condition; NaN + warning
    for an empty group).
    """
    cold = _conditions(truth, "truth", None)
    correct = _conditions(pred, "pred", cold.size) == cold
    fault = _labels(labels, "labels", cold.size)
    metrics = {"gate_acc": _fraction("all", correct)}
    for kind, of_kind in (("good", ~fault), ("fault", fault)):
        for condition, in_condition in (("cold", cold), ("warm", ~cold)):
            metrics[f"gate_acc_{kind}_{condition}"] = _fraction(
                f"{kind}_{condition}", correct[of_kind & in_condition]
            )
    return metrics
