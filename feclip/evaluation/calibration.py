"""Decision thresholds calibrated on normal images only, stored with a checkpoint and applied unchanged later.

A calibration record holds percentiles of the image score and of two map statistics (max, top-k mean) over
normal images never used for training (`eval.threshold.source`: held-out train normals, or the study split's
refs normals that are not bank references), their mean/std (for z-scores), the chosen operating point and
what the record was fitted on (backbone, input geometry, prompt set, data hash).

Operating points named in advance as false-alarm rates (`eval.threshold.false_alarm_rates`: 0.01 -> `fa1`,
0.05 -> `fa5`): threshold = the (1 - rate) quantile (numpy linear) of the normals' scores, fault iff score >
threshold, so at most `rate` of the fitted normals are flagged (and at least rate - 1/n). With
`per_condition`, one threshold per condition of the normals ('cold', 'warm': the gate's routing in gated
runs, the known condition otherwise) beside the global 'all'; a condition without normals gets the global
one (recorded under `fallback`). Each threshold's bootstrap SD (resampled normals, seeded): `threshold_sd`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from feclip.errors import FeclipError
from feclip.evaluation.metrics.checks import CONDITIONS, fraction
from feclip.evaluation.metrics.image import threshold_accuracies
from feclip.registry import choices

STATISTICS = ("score", "map_max", "map_topk")
THRESHOLD_SOURCES = choices("threshold source", "eval.threshold.source", ("val", "refs"))
ALL = "all"


class CalibrationError(FeclipError):
    """A calibration record or operating point is unusable."""


def _summary(values: np.ndarray, percentiles: list[float]) -> dict[str, float]:
    summary = {f"p{p:g}": float(np.percentile(values, p)) for p in percentiles}
    return {**summary, "mean": float(values.mean()), "std": float(values.std())}


def point_name(rate: float) -> str:
    """The operating point of a false-alarm rate: 0.01 -> 'fa1', 0.05 -> 'fa5', 0.005 -> 'fa0.5'."""
    return f"fa{100 * rate:g}"


def fit(
    statistics: dict[str, np.ndarray],
    percentiles: list[float],
    operating_point: str,
    context: dict[str, Any],
    *,
    thresholds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Record from per-image statistics of normal images: {'score', 'map_max', 'map_topk'} -> (N,) each;
    thresholds: `fit_thresholds` of the same normals' scores (their points become operating points)."""
    points = [f"p{p:g}" for p in percentiles] + list((thresholds or {}).get("thresholds", {}))
    if operating_point not in points:
        raise CalibrationError(f"operating point {operating_point!r} is not among {points}")
    n = {len(v) for v in statistics.values()}
    if len(n) != 1 or 0 in n:
        raise CalibrationError(f"calibration needs equally many (> 0) values per statistic, got {sorted(n)}")
    return {
        "n_normals": n.pop(),
        "operating_point": operating_point,
        **{
            name: _summary(np.asarray(statistics[name], dtype=np.float64), percentiles) for name in STATISTICS
        },
        **(thresholds or {}),
        **context,
    }


def fit_thresholds(
    scores: np.ndarray, groups: np.ndarray | None, rates: list[float], *, n_boot: int, seed: int
) -> dict[str, Any]:
    """Thresholds at false-alarm `rates` of normal scores (N,); groups: (N,) condition per normal, or None
    for one global threshold. -> {false_alarm_rates, thresholds, threshold_sd, n_normals_by, per_condition,
    fallback} (point -> group -> value; groups 'all' and, per condition, 'cold' / 'warm')."""
    scores = np.asarray(scores, dtype=np.float64)
    members = {ALL: scores}
    if groups is not None:
        members.update({c: scores[np.asarray(groups) == c] for c in CONDITIONS})
    rng = np.random.default_rng(seed)
    values, sds = {}, {}
    for rate in rates:
        name = point_name(rate)
        values[name] = {g: _quantile(s, 1 - rate) if len(s) else None for g, s in members.items()}
        sds[name] = {g: _bootstrap_sd(s, 1 - rate, n_boot, rng) for g, s in members.items()}
    fallback = [g for g, s in members.items() if not len(s)]
    for name in values:
        values[name].update({g: values[name][ALL] for g in fallback})
    return {
        "false_alarm_rates": {point_name(rate): float(rate) for rate in rates},
        "thresholds": values,
        "threshold_sd": sds,
        "n_normals_by": {g: len(s) for g, s in members.items()},
        "per_condition": groups is not None,
        "fallback": fallback,
    }


def _quantile(values: np.ndarray, q: float) -> float:
    return float(np.quantile(values, q))


def _bootstrap_sd(values: np.ndarray, q: float, n_boot: int, rng: np.random.Generator) -> float:
    """SD over `n_boot` resamples (with replacement) of the q-quantile of values (N,); NaN for N < 2."""
    if len(values) < 2:
        return float("nan")
    resampled = values[rng.integers(0, len(values), size=(n_boot, len(values)))]
    return float(np.quantile(resampled, q, axis=1).std(ddof=1))


def threshold(
    record: dict[str, Any],
    operating_point: str | None = None,
    statistic: str = "score",
    condition: str | None = None,
) -> float:
    """The decision threshold of `statistic` at `operating_point` (default: the record's own): a percentile
    point (p99, ...) of the normals, or a false-alarm point (fa1, ...) of the score, per `condition` when
    the record has per-condition thresholds (else, or for condition None, the global one)."""
    point = operating_point or record["operating_point"]
    named = record.get("thresholds", {})
    if statistic == "score" and point in named:
        per_point = named[point]
        return per_point[condition if condition in per_point else ALL]
    if point not in record[statistic]:
        known = [k for k in record[statistic] if k.startswith("p")] + list(named)
        raise CalibrationError(f"operating point {point!r} is not in the calibration record; it has {known}")
    return record[statistic][point]


def decide(
    scores: np.ndarray,
    record: dict[str, Any],
    operating_point: str | None = None,
    conditions: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) bool: fault when the score exceeds the calibrated threshold (per image's condition (N,) when
    given and the record has per-condition thresholds)."""
    if conditions is None:
        return np.asarray(scores) > threshold(record, operating_point)
    limits = [threshold(record, operating_point, condition=str(c)) for c in conditions]
    return np.asarray(scores) > np.asarray(limits, dtype=np.float64)


def threshold_metrics(record: dict[str, Any]) -> dict[str, float]:
    """thr_<point>[_<condition>], its bootstrap SD thr_<point>[_<condition>]_sd, and the normals they were
    fitted on, n_thr_normals[_<condition>] (the condition suffixes with per-condition thresholds only)."""
    metrics = {}
    for group, n in record["n_normals_by"].items():
        suffix = "" if group == ALL else f"_{group}"
        metrics[f"n_thr_normals{suffix}"] = float(n)
        for point, values in record["thresholds"].items():
            metrics[f"thr_{point}{suffix}"] = values[group]
            metrics[f"thr_{point}{suffix}_sd"] = record["threshold_sd"][point][group]
    return {k: float("nan") if v is None else v for k, v in metrics.items()}


def rate_metrics(
    record: dict[str, Any], scores: np.ndarray, fault: np.ndarray, cold: np.ndarray, groups: np.ndarray | None
) -> dict[str, float]:
    """At every false-alarm point of the record, on a scored set: the realised false-alarm rate far_<point>,
    detection rate tpr_<point> and accuracy acc_<point>, overall and per true condition (_cold, _warm).
    scores (N,); fault, cold: (N,) bool truth; groups: (N,) condition that picks each image's threshold."""
    metrics = {}
    for point in record["thresholds"]:
        flagged = decide(scores, record, point, groups if record["per_condition"] else None)
        for suffix, rows in (("", np.ones_like(cold)), ("_cold", cold), ("_warm", ~cold)):
            subset = suffix.lstrip("_") or "all"
            metrics[f"far_{point}{suffix}"] = fraction(f"{subset} good", flagged[rows & ~fault])
            metrics[f"tpr_{point}{suffix}"] = fraction(f"{subset} fault", flagged[rows & fault])
        metrics.update(threshold_accuracies(point, flagged, fault, cold))
    return metrics


def zscore(scores: np.ndarray, record: dict[str, Any]) -> np.ndarray:
    """(N,) scores in standard deviations of the calibration normals' scores."""
    return (np.asarray(scores) - record["score"]["mean"]) / max(record["score"]["std"], 1e-12)
