"""Statistics for decidable comparisons: DeLong AUROC variances, exact McNemar, stratified / paired /
hierarchical bootstrap intervals, Holm's correction and minimum detectable differences.

Conventions (those of `feclip.evaluation.metrics`): higher score = more anomalous; `positive` is a bool
mask, True = fault; AUROC = Mann-Whitney with ties 1/2; rates and differences are fractions (reports multiply
by 100); p-values are two-sided.

Bootstrap statistics are functions of an index matrix `idx: (R, N) int` (R resamples of the N images) that
return `(R,)` values. `stratified_indices` draws every column j from the stratum of image j, so each resample
keeps the label x condition counts and `positive` (N,) stays valid for the resampled columns; the identity
`np.arange(N)[None]` gives the point estimate. A threshold derived from the data (an oracle percentile, a
quantile of calibration normals) is recomputed inside the statistic, so its own noise enters the interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from feclip.evaluation.metrics import MetricsError

Statistic = Callable[[np.ndarray], np.ndarray]  # idx (R, N) int -> (R,) float
ThresholdRule = Callable[[np.ndarray], np.ndarray]  # normal scores (R, M) -> thresholds (R,)


# ------------------------------------------------------------------------------------------------- DeLong
def midranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..N along the last axis of x (..., N), ties sharing their mean rank (= scipy's rankdata)."""
    n = x.shape[-1]
    order = np.argsort(x, axis=-1)
    ranked = np.take_along_axis(x, order, axis=-1)
    tie = ranked[..., 1:] == ranked[..., :-1]  # (..., N - 1): same value as the next
    edge = np.zeros_like(tie[..., :1])
    position = np.broadcast_to(np.arange(n), x.shape)
    first = np.maximum.accumulate(np.where(np.concatenate([edge, tie], -1), 0, position), axis=-1)
    last = np.where(np.concatenate([tie, edge], -1), n - 1, position)
    last = np.flip(np.minimum.accumulate(np.flip(last, -1), axis=-1), -1)
    ranks = np.empty(x.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=-1)
    return ranks


class DeLong(NamedTuple):
    auroc: float
    variance: float
    se: float


class PairedDeLong(NamedTuple):
    delta: float  # auroc_a - auroc_b
    se: float
    z: float
    p: float
    correlation: float  # of the two AUROC estimates


def _delong_covariance(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(auroc (K,), covariance (K, K)) of K scorings (K, N) of the same images (Sun & Xu 2014, midranks)."""
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise MetricsError(f"DeLong: expected at least 2 faults and 2 goods, got {m} and {n}")
    x, y = scores[:, positive], scores[:, ~positive]
    combined = midranks(np.concatenate([x, y], axis=1))
    v10 = (combined[:, :m] - midranks(x)) / n  # (K, m): P(x_i > y) per fault
    v01 = 1.0 - (combined[:, m:] - midranks(y)) / m  # (K, n): P(x > y_j) per good
    auroc = v10.mean(axis=1)
    covariance = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return auroc, covariance


def delong(scores, positive) -> DeLong:
    """AUROC of scores (N,) against positive (N,) bool and its DeLong variance and standard error."""
    auroc, covariance = _delong_covariance(np.asarray(scores, float)[None], np.asarray(positive, bool))
    variance = float(covariance[0, 0])
    return DeLong(float(auroc[0]), variance, variance**0.5)


def paired_delong(scores_a, scores_b, positive) -> PairedDeLong:
    """AUROC(a) - AUROC(b) of two scorings (N,) of the same images, with the DeLong covariance of the pair:
    se, z, two-sided normal p and the correlation of the two estimates. Equal scorings give z 0, p 1."""
    auroc, cov = _delong_covariance(np.stack([scores_a, scores_b]).astype(float), np.asarray(positive, bool))
    delta = float(auroc[0] - auroc[1])
    se = float(max(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1], 0.0)) ** 0.5
    z = delta / se if se > 0 else (0.0 if delta == 0 else np.copysign(np.inf, delta))
    denominator = (cov[0, 0] * cov[1, 1]) ** 0.5
    correlation = float(cov[0, 1] / denominator) if denominator > 0 else 1.0
    return PairedDeLong(delta, se, float(z), float(2 * sps.norm.sf(abs(z))), correlation)


def hanley_mcneil_se(auroc, n_pos, n_neg):
    """Hanley & McNeil (1982) standard error of an AUROC (fraction) from n_pos faults and n_neg goods;
    broadcasts over arrays."""
    a = np.asarray(auroc, float)
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    variance = (a * (1 - a) + (n_pos - 1) * (q1 - a**2) + (n_neg - 1) * (q2 - a**2)) / (n_pos * n_neg)
    return np.sqrt(variance)


# ------------------------------------------------------------------------------------------------ McNemar
class McNemar(NamedTuple):
    b: int  # a correct, b wrong
    c: int  # a wrong, b correct
    p: float


def mcnemar_exact(correct_a, correct_b) -> McNemar:
    """Exact two-sided McNemar test of two paired (N,) bool correctness vectors: the binomial test of b out
    of b + c discordant pairs at 1/2 (= `scipy.stats.binomtest(b, b + c).pvalue`; 1 when b = c = 0)."""
    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    p = min(1.0, 2 * float(sps.binom.cdf(min(b, c), b + c, 0.5))) if b + c else 1.0
    return McNemar(b, c, p)


# ---------------------------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class Interval:
    """A bootstrap estimate with its percentile interval; replicates: (R,)."""

    estimate: float
    lo: float
    hi: float
    replicates: np.ndarray

    @property
    def p(self) -> float:
        """Two-sided bootstrap p of "the true value is 0" (meaningful for differences):
        2 (min(#(rep <= 0), #(rep >= 0)) + 1) / (R + 1), capped at 1."""
        tail = min((self.replicates <= 0).sum(), (self.replicates >= 0).sum())
        return float(min(1.0, 2 * (tail + 1) / (self.replicates.size + 1)))


def stratified_indices(strata, *, n: int = 2000, seed: int = 0) -> np.ndarray:
    """(n, N) int resample indices: column j is drawn with replacement from the images in the stratum of
    image j (strata: (N,) hashable labels, e.g. label x condition), so every row keeps the stratum sizes."""
    strata = np.asarray(strata)
    rng = np.random.default_rng(seed)
    idx = np.empty((n, strata.size), dtype=np.intp)
    for stratum in np.unique(strata):
        members = np.flatnonzero(strata == stratum)
        idx[:, members] = members[rng.integers(0, members.size, (n, members.size))]
    return idx


def percentile_interval(replicates: np.ndarray, *, level: float = 0.95) -> tuple[float, float]:
    """(lo, hi): the (1 - level) / 2 and (1 + level) / 2 percentiles of replicates (R,)."""
    lo, hi = np.percentile(replicates, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def _interval(statistic: Statistic, idx: np.ndarray, level: float) -> Interval:
    replicates = np.asarray(statistic(idx), float)
    estimate = float(statistic(np.arange(idx.shape[1])[None])[0])
    return Interval(estimate, *percentile_interval(replicates, level=level), replicates)


def stratified_bootstrap(
    statistic: Statistic, strata, *, n: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Percentile interval of statistic(idx (R, N)) -> (R,) over n resamples stratified by strata (N,)."""
    return _interval(statistic, stratified_indices(strata, n=n, seed=seed), level)


def paired_bootstrap(
    stat_a: Statistic, stat_b: Statistic, strata, *, n: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Interval of stat_a - stat_b, both evaluated on the same stratified resamples of the same images."""
    return stratified_bootstrap(lambda idx: stat_a(idx) - stat_b(idx), strata, n=n, seed=seed, level=level)


def hierarchical_bootstrap(
    stats_a: Sequence[Statistic],
    stats_b: Sequence[Statistic],
    strata,
    *,
    n: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    paired: bool = False,
) -> Interval:
    """Mean over seeds of A minus mean over seeds of B, one statistic per seed, all seeds scored on the same
    N images. Each replicate resamples the images once (stratified, shared by every seed: the pairing by
    image is kept) and the seeds with replacement: independently for A and B, or, `paired` (stats_a[i] and
    stats_b[i] ran with the same seed: same initialisation, validation split, ...), the same seed draws for
    both, so a seed effect they share cancels. `.p` is the bootstrap p. Unpaired is conservative where the
    seed spread is itself image-level noise (counted then at both levels): in the tests' simulation no
    comparison of two seed sets of one method reaches p < 0.05."""
    if paired and len(stats_a) != len(stats_b):
        raise ValueError(f"paired seeds: {len(stats_a)} statistics of A, {len(stats_b)} of B")
    idx = stratified_indices(strata, n=n, seed=seed)
    rng = np.random.default_rng([seed, 1])
    shared = rng.integers(0, len(stats_a), (len(stats_a), n)) if paired else None

    def seed_mean(statistics: Sequence[Statistic]) -> np.ndarray:
        values = np.stack([np.asarray(s(idx), float) for s in statistics])  # (S, R)
        drawn = shared if paired else rng.integers(0, len(statistics), (len(statistics), n))  # (S, R)
        return values[drawn, np.arange(n)].mean(axis=0)

    replicates = seed_mean(stats_a) - seed_mean(stats_b)
    identity = np.arange(idx.shape[1])[None]
    estimate = np.mean([s(identity)[0] for s in stats_a]) - np.mean([s(identity)[0] for s in stats_b])
    return Interval(float(estimate), *percentile_interval(replicates, level=level), replicates)


# ------------------------------------------------------------------------------- statistics over resamples
def auroc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """(R,) Mann-Whitney AUROC (ties 1/2) of every row of scores (R, N) against positive (N,) bool."""
    m, n = int(positive.sum()), int((~positive).sum())
    ranks = midranks(scores)[..., positive]
    return (ranks.sum(axis=-1) - m * (m + 1) / 2) / (m * n)


def accuracy_rows(scores: np.ndarray, positive: np.ndarray, thresholds, *, strict: bool) -> np.ndarray:
    """(R,) accuracy of "fault iff score > t" (strict, acc_val) or ">= t" (acc_oracle) for scores (R, N),
    positive (N,) bool and thresholds (R,) or a scalar (score units)."""
    t = np.asarray(thresholds, float).reshape(-1, 1)
    predicted = scores > t if strict else scores >= t
    return (predicted == positive).mean(axis=-1)


def oracle_thresholds(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """(R,) acc_oracle thresholds of scores (R, N) against positive (N,) bool: per row the first of the
    0th..100th percentiles (numpy linear) with the best accuracy of score >= t, as `metrics.hdmap_metrics`."""
    candidates = np.percentile(scores, np.arange(101), axis=-1).T  # (R, 101)
    rows = scores.shape[0]
    # a stable sort puts each candidate before the equal scores: the count before it is #(score < t)
    order = np.argsort(np.concatenate([candidates, scores], axis=1), axis=1, kind="stable")
    is_score = order >= 101
    fault = np.zeros_like(order, dtype=bool)
    fault[is_score] = positive[order[is_score] - 101]
    faults_below = np.cumsum(fault, axis=1)
    goods_below = np.cumsum(is_score, axis=1) - faults_below
    at_candidate = ~is_score
    column = order[at_candidate].reshape(rows, 101)
    correct = np.empty((rows, 101), dtype=np.int64)
    correct[np.arange(rows)[:, None], column] = (
        goods_below[at_candidate] + int(positive.sum()) - faults_below[at_candidate]
    ).reshape(rows, 101)
    return candidates[np.arange(rows), np.argmax(correct, axis=1)]


def percentile_rule(percentile: float) -> ThresholdRule:
    """A threshold rule: the `percentile` (in [0, 100], numpy linear) of each row of normal scores (R, M)."""
    return lambda normals: np.percentile(normals, percentile, axis=-1)


def rule_accuracy(
    scores: np.ndarray, positive: np.ndarray, rule: ThresholdRule, *, calibration=None, strict: bool = True
) -> Statistic:
    """Statistic: accuracy on the test images with the threshold rule re-run on each resample's normals.

    scores: (N,) score units; positive: (N,) bool; calibration: (N,) bool marking held-out normals that set
    the threshold and are not scored (give them their own stratum), or None (the rule then sees the test
    goods). Accuracy is over the remaining images with "fault iff score > t" (strict) or ">= t"."""
    calibration = np.zeros(scores.size, bool) if calibration is None else np.asarray(calibration, bool)
    source = calibration if calibration.any() else ~positive
    test = ~calibration

    def statistic(idx: np.ndarray) -> np.ndarray:
        resampled = scores[idx]
        thresholds = rule(resampled[:, source])
        return accuracy_rows(resampled[:, test], positive[test], thresholds, strict=strict)

    return statistic


# ---------------------------------------------------------------------------------------- multiplicity
def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values of pvalues (K,): step-down, monotone in the raw order, capped at 1; NaN stays
    NaN and is not counted among the K tests."""
    p = np.asarray(pvalues, float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    order = finite[np.argsort(p[finite], kind="stable")]
    steps = p[order] * (order.size - np.arange(order.size))
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


# ---------------------------------------------------------------------------------------------- power
def _z_sum(alpha: float, power: float) -> tuple[float, float]:
    return float(sps.norm.isf(alpha / 2)), float(sps.norm.ppf(power))


def mdd_of_se(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest difference a two-sided z test at `alpha` detects with `power` when the estimated difference
    has standard error se (e.g. the SD of bootstrap replicates): (z_a + z_b) * se, in the units of se."""
    return float(sum(_z_sum(alpha, power)) * se)


def mdd_auroc(
    auroc: float, n_pos: int, n_neg: int, *, correlation: float = 0.0, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest AUROC difference (fraction) a two-sided z test at `alpha` detects with `power`: both AUROCs
    with the Hanley-McNeil SE at `auroc`, their estimates correlated by `correlation` (0 = unpaired,
    conservative; paired DeLong gives the observed one): (z_a + z_b) * SE * sqrt(2 (1 - r))."""
    se = hanley_mcneil_se(auroc, n_pos, n_neg) * np.sqrt(2 * (1 - correlation))
    return mdd_of_se(se, alpha=alpha, power=power)


def mdd_accuracy_paired(discordance: float, n: int, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest accuracy difference (fraction) McNemar detects on n paired images with discordance rate
    psi = P(exactly one is correct): Connor's (1987) sample size n = (z_a sqrt(psi) + z_b sqrt(psi - d^2))^2
    / d^2 solved for d."""
    z_a, z_b = _z_sum(alpha, power)
    root = z_a * np.sqrt(n) + z_b * np.sqrt(n - z_a**2 + z_b**2)
    return float(np.sqrt(discordance) * root / (n + z_b**2))


def mdd_accuracy_unpaired(
    accuracy: float, n_a: int, n_b: int, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Smallest difference of two independent accuracies (fractions, n_a and n_b images) a two-sided z test
    detects: (z_a + z_b) sqrt(p (1 - p) (1 / n_a + 1 / n_b)) at the base accuracy p."""
    return mdd_of_se(np.sqrt(accuracy * (1 - accuracy) * (1 / n_a + 1 / n_b)), alpha=alpha, power=power)
