"""Pixel-level metrics: pixel AUROC and PRO (Bergmann et al.), exact or with bounded memory."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from feclip.evaluation.metrics.checks import MetricsError, defined, maps_and_masks
from feclip.evaluation.metrics.image import auroc_of

# Pixels sampled (with a fixed seed) to place PRO thresholds; maps processed this many pixels at a time.
PRO_SAMPLE_PIXELS = 2**22
PRO_LEVELS = 1000  # default n_levels of pro_score
PRO_CHUNK_PIXELS = 2**22


def pixel_subset_auroc(subset: str, maps: np.ndarray, positive: np.ndarray) -> float:
    return (
        auroc_of(maps.ravel(), positive.ravel()) if defined(subset, "pixel AUROC", positive) else float("nan")
    )


def pixel_auroc(maps, masks) -> float:
    """AUROC over all pixels of all images (exact, ties 1/2); maps, masks: (N, H, W), normal images all-zero.

    Memory: one sorted copy of the normal pixels and two integer arrays the size of the anomalous pixels.
    """
    maps, positive = maps_and_masks(maps, masks)
    return pixel_subset_auroc("all pixels", maps, positive)


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


def pro_subset(subset: str, maps: np.ndarray, positive: np.ndarray, max_fpr: float, n_levels: int) -> float:
    if not defined(subset, "PRO", positive):
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
    maps, positive = maps_and_masks(maps, masks)
    return pro_subset("all pixels", maps, positive, max_fpr, n_levels)
