"""Decision thresholds calibrated on normal images only, stored with a checkpoint and applied unchanged later.

A calibration record holds percentiles of the image score and of two map statistics (max, top-k mean) over
held-out normal images never used for training, their mean/std (for z-scores), the chosen operating point and
what the record was fitted on (backbone, input geometry, prompt set, data hash).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from feclip.errors import FeclipError

OPERATING_POINTS = ("p99", "p99.5", "p99.9")
STATISTICS = ("score", "map_max", "map_topk")


class CalibrationError(FeclipError):
    """A calibration record or operating point is unusable."""


def _summary(values: np.ndarray, percentiles: list[float]) -> dict[str, float]:
    summary = {f"p{p:g}": float(np.percentile(values, p)) for p in percentiles}
    return {**summary, "mean": float(values.mean()), "std": float(values.std())}


def fit(
    statistics: dict[str, np.ndarray], percentiles: list[float], operating_point: str, context: dict[str, Any]
) -> dict[str, Any]:
    """Record from per-image statistics of normal images: {'score', 'map_max', 'map_topk'} -> (N,) each."""
    if operating_point not in {f"p{p:g}" for p in percentiles}:
        raise CalibrationError(
            f"operating point {operating_point!r} is not among the percentiles {percentiles}"
        )
    n = {len(v) for v in statistics.values()}
    if len(n) != 1 or 0 in n:
        raise CalibrationError(f"calibration needs equally many (> 0) values per statistic, got {sorted(n)}")
    return {
        "n_normals": n.pop(),
        "operating_point": operating_point,
        **{
            name: _summary(np.asarray(statistics[name], dtype=np.float64), percentiles) for name in STATISTICS
        },
        **context,
    }


def threshold(record: dict[str, Any], operating_point: str | None = None, statistic: str = "score") -> float:
    """The decision threshold of `statistic` at `operating_point` (default: the record's own)."""
    point = operating_point or record["operating_point"]
    if point not in record[statistic]:
        known = [k for k in record[statistic] if k.startswith("p")]
        raise CalibrationError(f"operating point {point!r} is not in the calibration record; it has {known}")
    return record[statistic][point]


def decide(scores: np.ndarray, record: dict[str, Any], operating_point: str | None = None) -> np.ndarray:
    """(N,) bool: fault when the score exceeds the calibrated threshold."""
    return np.asarray(scores) > threshold(record, operating_point)


def zscore(scores: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """(N,) scores in standard deviations of the calibration normals' scores."""
    return (np.asarray(scores) - record["score"]["mean"]) / max(record["score"]["std"], 1e-12)
