"""Input checks shared by the metric modules: arrays from numpy/lists/tensors, one-line `MetricsError`s,
and the NaN-with-a-warning rule for subsets where a metric is undefined (see `feclip.evaluation.metrics`)."""

from __future__ import annotations

import sys
import warnings

import numpy as np

from feclip.errors import FeclipError

CONDITIONS = ("cold", "warm")


class MetricsError(FeclipError):
    """Bad input to a metric function."""


class MetricWarning(UserWarning):
    """A metric is undefined on its subset (set to NaN); jobs keep the message as the reason."""


def as_numpy(values) -> np.ndarray:
    """A numpy view/copy of a tensor (detached, on CPU; half precision widened to float32) or array-like."""
    torch = sys.modules.get("torch")  # a tensor means torch is loaded; metrics of CSV scores load none
    if torch is not None and isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        return values.numpy()
    return np.asarray(values)


def check_finite(array: np.ndarray, name: str) -> None:
    if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
        raise MetricsError(f"{name}: expected finite values, found NaN or inf")


def score_array(values, name: str) -> np.ndarray:
    """(N,) float64 finite scores."""
    array = as_numpy(values)
    if array.ndim != 1 or array.dtype.kind not in "biuf":
        raise MetricsError(
            f"{name}: expected a 1-D numeric array, got shape {array.shape} dtype {array.dtype}"
        )
    array = array.astype(np.float64)
    check_finite(array, name)
    return array


def label_array(values, name: str, n: int) -> np.ndarray:
    """(n,) bool, True = fault, from 0/1 labels."""
    array = as_numpy(values)
    if array.shape != (n,):
        raise MetricsError(f"{name}: expected shape ({n},) to match the scores, got {array.shape}")
    bad = ~np.isin(array, (0, 1))
    if bad.any():
        raise MetricsError(f"{name}: expected labels 0 (good) or 1 (fault), got {array[bad][0]!r}")
    return array.astype(bool)


def condition_array(values, name: str, n: int | None) -> np.ndarray:
    """(n,) bool, True = cold, from 'cold' / 'warm' strings; n=None accepts any 1-D length."""
    array = np.asarray(values, dtype=object)
    if array.ndim != 1 or n not in (None, array.size):
        raise MetricsError(f"{name}: expected shape ({n or 'N'},), got {array.shape}")
    unknown = sorted({str(value) for value in array.tolist()} - set(CONDITIONS))
    if unknown:
        raise MetricsError(f"{name}: unknown value(s) {unknown[:3]}; expected 'cold' or 'warm'")
    return array == "cold"


def maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """maps: (N, H, W) float (>= 32-bit, finite); masks: (N, H, W) {0, 1} -> bool (True = anomalous pixel)."""
    maps, masks = as_numpy(maps), as_numpy(masks)
    if maps.ndim != 3 or maps.shape != masks.shape:
        raise MetricsError(f"maps/masks: expected equal (N, H, W) shapes, got {maps.shape} and {masks.shape}")
    if maps.dtype.kind != "f" or maps.itemsize < 4:
        maps = maps.astype(np.float32)
    check_finite(maps, "maps")
    positive = masks.astype(bool, copy=False)
    if masks.dtype != bool and not np.array_equal(positive, masks):
        raise MetricsError("masks: expected values 0 or 1 only")
    return maps, positive


def defined(subset: str, metric: str, positive: np.ndarray) -> bool:
    """True when `positive` (n,) bool holds both classes; otherwise warn that `metric` is NaN on `subset`."""
    n, n_pos = positive.size, int(positive.sum())
    if 0 < n_pos < n:
        return True
    what = "is empty" if n == 0 else f"has only {'fault' if n_pos else 'good'} samples (n={n})"
    warnings.warn(f"metrics: subset '{subset}' {what}; {metric} set to NaN", MetricWarning, stacklevel=4)
    return False


def fraction(subset: str, correct: np.ndarray) -> float:
    """Mean of correct (n,) bool; NaN with a warning when the subset is empty."""
    if correct.size == 0:
        warnings.warn(
            f"metrics: subset '{subset}' is empty; accuracy set to NaN", MetricWarning, stacklevel=3
        )
        return float("nan")
    return float(np.mean(correct))
