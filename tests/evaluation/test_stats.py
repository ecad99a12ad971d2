"""feclip.evaluation.stats against brute-force references, scipy, hand-computed values and seeded simulations
(binormal scores: goods N(0, 1), faults N(d, 1), true AUROC Phi(d / sqrt 2))."""

import numpy as np
import pytest
from scipy import stats as sps

from feclip.evaluation import stats
from feclip.evaluation.metrics import MetricsError
from feclip.evaluation.metrics.image import _oracle_threshold, auroc_of

Z_975, Z_80 = 1.959964, 0.841621  # normal quantiles for alpha 0.05 two-sided and 80 % power


def tied_case(seed: int, n: int = 40):
    """(scores (3, n) with many ties, positive (n,) bool): three correlated scorings of the same images."""
    rng = np.random.default_rng(seed)
    positive = np.arange(n) < n // 3
    truth = rng.normal(size=n) + positive
    return np.round(truth + 0.5 * rng.normal(size=(3, n))), positive


def components(scores: np.ndarray, positive: np.ndarray):
    """Brute-force DeLong structural components: V10 (m,) per fault, V01 (n,) per good."""
    x, y = scores[positive], scores[~positive]
    psi = np.array([[1.0 if xi > yj else 0.5 if xi == yj else 0.0 for yj in y] for xi in x])
    return psi.mean(axis=1), psi.mean(axis=0)


# ------------------------------------------------------------------------------------------------- DeLong
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_variance_equals_brute_force_with_ties(seed):
    scores, positive = tied_case(seed)
    v10, v01 = components(scores[0], positive)
    result = stats.delong(scores[0], positive)
    assert result.auroc == pytest.approx(v10.mean(), abs=1e-12)
    assert result.auroc == pytest.approx(auroc_of(scores[0], positive), abs=1e-12)
    expected = np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size
    assert result.variance == pytest.approx(expected, rel=1e-10)
    assert result.se == pytest.approx(expected**0.5, rel=1e-10)


@pytest.mark.parametrize("seed", [3, 4])
def test_paired_delong_covariance_equals_brute_force(seed):
    scores, positive = tied_case(seed)
    (a10, a01), (b10, b01) = components(scores[0], positive), components(scores[1], positive)
    var_a = np.var(a10, ddof=1) / a10.size + np.var(a01, ddof=1) / a01.size
    var_b = np.var(b10, ddof=1) / b10.size + np.var(b01, ddof=1) / b01.size
    cov = np.cov(a10, b10)[0, 1] / a10.size + np.cov(a01, b01)[0, 1] / a01.size
    result = stats.paired_delong(scores[0], scores[1], positive)
    delta = a10.mean() - b10.mean()
    se = (var_a + var_b - 2 * cov) ** 0.5
    assert result.delta == pytest.approx(delta, abs=1e-12)
    assert result.se == pytest.approx(se, rel=1e-10)
    assert result.z == pytest.approx(delta / se, rel=1e-10)
    assert result.p == pytest.approx(2 * sps.norm.sf(abs(delta / se)), rel=1e-10)
    assert result.correlation == pytest.approx(cov / (var_a * var_b) ** 0.5, rel=1e-10)


def test_paired_delong_of_identical_scorings_is_no_difference():
    scores, positive = tied_case(5)
    result = stats.paired_delong(scores[0], scores[0], positive)
    assert (result.delta, result.se, result.z, result.p) == (0.0, 0.0, 0.0, 1.0)


def test_delong_refuses_a_single_fault():
    with pytest.raises(MetricsError, match="at least 2 faults and 2 goods, got 1 and 3"):
        stats.delong([0.1, 0.2, 0.3, 0.9], np.array([0, 0, 0, 1], bool))


def test_midranks_and_auroc_rows_match_scipy_and_the_metrics():
    scores, positive = tied_case(6, n=30)
    np.testing.assert_array_equal(stats.midranks(scores), sps.rankdata(scores, axis=1))
    expected = [auroc_of(row, positive) for row in scores]
    np.testing.assert_allclose(stats.auroc_rows(scores, positive), expected, atol=1e-12)


def test_oracle_thresholds_match_the_metrics_per_row():
    scores, positive = tied_case(7, n=50)
    rows = np.concatenate([scores, np.random.default_rng(0).normal(size=(20, 50))])
    expected = [_oracle_threshold(row, positive) for row in rows]
    np.testing.assert_array_equal(stats.oracle_thresholds(rows, positive), expected)


def test_hanley_mcneil_se_by_hand():
    # A = 0.8: Q1 = 0.8 / 1.2, Q2 = 2 * 0.64 / 1.8; 50 faults, 100 goods
    variance = (0.8 * 0.2 + 49 * (0.8 / 1.2 - 0.64) + 99 * (1.28 / 1.8 - 0.64)) / 5000
    assert stats.hanley_mcneil_se(0.8, 50, 100) == pytest.approx(variance**0.5, rel=1e-12)
    assert stats.hanley_mcneil_se(0.8, 50, 100) == pytest.approx(0.041247, abs=1e-6)


# ------------------------------------------------------------------------------------------------ McNemar
@pytest.mark.parametrize("b, c", [(0, 0), (3, 3), (0, 5), (7, 2), (12, 30), (1, 0), (40, 61)])
def test_mcnemar_exact_equals_binomtest(b, c):
    # b images only a gets right, c only b, plus 5 both right and 4 both wrong
    correct_a = np.r_[np.ones(b), np.zeros(c), np.ones(5), np.zeros(4)].astype(bool)
    correct_b = np.r_[np.zeros(b), np.ones(c), np.ones(5), np.zeros(4)].astype(bool)
    result = stats.mcnemar_exact(correct_a, correct_b)
    assert (result.b, result.c) == (b, c)
    expected = 1.0 if b + c == 0 else sps.binomtest(b, b + c, 0.5).pvalue
    assert result.p == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------------------------- bootstrap
def test_stratified_indices_keep_every_stratum_and_repeat_with_the_seed():
    strata = np.array(["cold0", "cold1", "warm0", "warm1"])[np.random.default_rng(0).integers(0, 4, 50)]
    idx = stats.stratified_indices(strata, n=300, seed=3)
    assert idx.shape == (300, 50)
    assert (strata[idx] == strata).all()
    assert len({tuple(row) for row in idx}) == 300  # resamples differ
    np.testing.assert_array_equal(idx, stats.stratified_indices(strata, n=300, seed=3))


def test_percentile_interval_covers_a_known_auroc_near_95_percent():
    d, n_each = 1.0, 50
    truth = sps.norm.cdf(d / 2**0.5)
    positive = np.arange(2 * n_each) < n_each
    rng = np.random.default_rng(11)
    covered = []
    for sim in range(200):
        scores = rng.normal(size=2 * n_each) + d * positive
        interval = stats.stratified_bootstrap(
            lambda idx, s=scores: stats.auroc_rows(s[idx], positive), positive, n=500, seed=sim
        )
        covered.append(interval.lo <= truth <= interval.hi)
    assert 0.90 <= np.mean(covered) <= 0.99


def test_rerun_threshold_rule_widens_the_interval_of_a_calibrated_accuracy():
    # 20 calibration normals set thr = their 90th percentile: a noisy threshold on 600 test images
    rng = np.random.default_rng(2)
    positive = np.r_[np.zeros(20), np.zeros(300), np.ones(300)].astype(bool)
    calibration = np.arange(positive.size) < 20
    scores = rng.normal(size=positive.size) + 1.5 * positive
    strata = np.where(calibration, 2, positive)
    rule = stats.percentile_rule(90)
    fixed = rule(scores[calibration][None])[0]
    test = ~calibration

    def fixed_accuracy(idx):
        return stats.accuracy_rows(scores[idx[:, test]], positive[test], fixed, strict=True)

    rerun = stats.stratified_bootstrap(
        stats.rule_accuracy(scores, positive, rule, calibration=calibration), strata, n=1000, seed=0
    )
    once = stats.stratified_bootstrap(fixed_accuracy, strata, n=1000, seed=0)
    assert rerun.estimate == once.estimate
    assert rerun.hi - rerun.lo > 1.5 * (once.hi - once.lo)


def test_rule_accuracy_without_calibration_thresholds_the_test_goods():
    positive = np.array([0, 0, 0, 0, 1, 1], bool)
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.35, 0.9])
    statistic = stats.rule_accuracy(scores, positive, stats.percentile_rule(100), strict=True)
    # thr = max good = 0.4; fault iff score > 0.4: only 0.35 is wrong
    assert statistic(np.arange(6)[None])[0] == pytest.approx(5 / 6)


def test_paired_bootstrap_agrees_with_paired_delong():
    rng = np.random.default_rng(4)
    positive = np.arange(400) < 200
    truth = rng.normal(size=400) + positive
    a, b = truth + 0.6 * rng.normal(size=400), truth + 0.6 * rng.normal(size=400) + 0.3 * positive

    def auroc_of_rows(scores):
        return lambda idx: stats.auroc_rows(scores[idx], positive)

    interval = stats.paired_bootstrap(auroc_of_rows(a), auroc_of_rows(b), positive, n=1000, seed=0)
    delong = stats.paired_delong(a, b, positive)
    assert interval.estimate == pytest.approx(delong.delta, abs=1e-12)
    assert (interval.hi - interval.lo) / (2 * Z_975 * delong.se) == pytest.approx(1.0, abs=0.15)
    same = stats.paired_bootstrap(auroc_of_rows(a), auroc_of_rows(a), positive, n=200, seed=0)
    assert (same.lo, same.hi, same.p) == (0.0, 0.0, 1.0)


def simulate_seeds(rng, *, shift: float, n_images: int = 300, seeds: int = 3, noise: float = 0.5):
    """Per-seed AUROC statistics of A and B: every seed adds its own image noise to a shared truth; A's
    faults are `shift` higher. Returns (interval, seed SD of B's AUROC)."""
    positive = np.arange(n_images) < n_images // 2
    truth = rng.normal(size=n_images) + 1.5 * positive
    a = [truth + shift * positive + noise * rng.normal(size=n_images) for _ in range(seeds)]
    b = [truth + noise * rng.normal(size=n_images) for _ in range(seeds)]

    def statistic(scores):
        return lambda idx: stats.auroc_rows(scores[idx], positive)

    interval = stats.hierarchical_bootstrap(
        [statistic(s) for s in a], [statistic(s) for s in b], positive, n=300, seed=int(rng.integers(1 << 30))
    )
    return interval, np.std([auroc_of(s, positive) for s in b], ddof=1)


def test_hierarchical_bootstrap_does_not_separate_seeds_of_one_method():
    rng = np.random.default_rng(7)
    called = [simulate_seeds(rng, shift=0.0)[0].p < 0.05 for _ in range(50)]
    assert np.mean(called) <= 0.10


def test_hierarchical_bootstrap_detects_a_shift_beyond_the_seed_spread():
    rng = np.random.default_rng(8)
    results = [simulate_seeds(rng, shift=0.3) for _ in range(50)]
    deltas, seed_sd = np.array([r.estimate for r, _ in results]), np.array([sd for _, sd in results])
    assert deltas.mean() > np.sqrt(np.mean(seed_sd**2)) + 0.02  # seed SD plus 2 points
    assert np.mean([r.p < 0.05 for r, _ in results]) >= 0.7
    assert np.mean([r.lo > 0 for r, _ in results]) >= 0.7


def test_hierarchical_estimate_is_the_difference_of_seed_means():
    positive = np.array([0, 0, 1, 1], bool)
    constant = [lambda idx, v=v: np.full(idx.shape[0], v) for v in (0.5, 0.7, 0.9)]
    interval = stats.hierarchical_bootstrap(constant[1:], constant[:1], positive, n=400, seed=0)
    assert interval.estimate == pytest.approx(0.8 - 0.5)
    assert set(np.round(interval.replicates, 6)) <= {0.2, 0.3, 0.4}  # seeds of A drawn with replacement
    assert interval.lo == pytest.approx(0.2) and interval.hi == pytest.approx(0.4)


# ---------------------------------------------------------------------------------------- Holm and power
def test_holm_by_hand():
    # sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> max so far 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(stats.holm([0.5, np.nan, 0.6]), [1.0, np.nan, 1.0])  # 0.5 x 2 capped
    assert stats.holm([0.2])[0] == 0.2


def test_mdd_auroc_by_hand():
    se = stats.hanley_mcneil_se(0.8, 50, 100)
    assert stats.mdd_auroc(0.8, 50, 100) == pytest.approx((Z_975 + Z_80) * se * 2**0.5, rel=1e-6)
    assert stats.mdd_auroc(0.8, 50, 100, correlation=0.75) == pytest.approx(
        (Z_975 + Z_80) * se * 0.5**0.5, rel=1e-6
    )


def test_mdd_of_se_by_hand():
    assert stats.mdd_of_se(0.01) == pytest.approx((Z_975 + Z_80) * 0.01, rel=1e-6)
    assert stats.mdd_of_se(0.01, alpha=0.01, power=0.9) == pytest.approx(
        (2.575829 + 1.281552) * 0.01, rel=1e-6
    )


def test_mdd_accuracy_paired_solves_connors_sample_size():
    for psi, n in [(0.1, 1000), (0.3, 200), (0.05, 5000)]:
        d = stats.mdd_accuracy_paired(psi, n)
        assert (Z_975 * psi**0.5 + Z_80 * (psi - d**2) ** 0.5) ** 2 / d**2 == pytest.approx(n, rel=1e-5)
    # without the d^2 term: about (z_a + z_b) sqrt(psi / n)
    assert stats.mdd_accuracy_paired(0.1, 1000) == pytest.approx(
        (Z_975 + Z_80) * (0.1 / 1000) ** 0.5, rel=0.01
    )


def test_mdd_accuracy_unpaired_by_hand():
    expected = (Z_975 + Z_80) * (0.9 * 0.1 * (1 / 1000 + 1 / 500)) ** 0.5
    assert stats.mdd_accuracy_unpaired(0.9, 1000, 500) == pytest.approx(expected, rel=1e-6)


def test_paired_seeds_cancel_a_seed_effect_both_variants_share():
    """Three seeds, each moving both variants by the same large offset (shared initialisation): A is B + 2
    points on every seed. Drawn together, the seeds cancel; drawn independently they swamp the shift."""
    positive = np.array([0, 0, 1, 1], bool)
    offsets = (0.0, 0.3, -0.3)

    def constant(value):
        return lambda idx: np.full(idx.shape[0], value)

    a = [constant(0.52 + o) for o in offsets]
    b = [constant(0.50 + o) for o in offsets]
    paired = stats.hierarchical_bootstrap(a, b, positive, n=400, seed=0, paired=True)
    assert paired.estimate == pytest.approx(0.02) and paired.lo == pytest.approx(0.02) == paired.hi
    unpaired = stats.hierarchical_bootstrap(a, b, positive, n=400, seed=0)
    assert unpaired.lo < 0 < unpaired.hi
    with pytest.raises(ValueError, match="paired seeds"):
        stats.hierarchical_bootstrap(a, b[:2], positive, n=10, seed=0, paired=True)


def auroc_statistic(scores: np.ndarray, positive: np.ndarray):
    return lambda idx: stats.auroc_rows(scores[idx], positive)


def test_paired_seeds_of_two_equal_variants_are_rarely_called_different():
    """Two variants with no true difference run with the same 3 seeds (each seed its own image noise, shared
    by both variants, plus each variant's own): p < 0.05 in at most about the nominal share."""
    rng = np.random.default_rng(11)
    positive = np.arange(300) < 150
    truth = rng.normal(size=300) + 1.5 * positive
    called = []
    for _ in range(40):
        per_seed = [truth + 0.5 * rng.normal(size=300) for _ in range(3)]
        a = [s + 0.3 * rng.normal(size=300) for s in per_seed]
        b = [s + 0.3 * rng.normal(size=300) for s in per_seed]
        statistics = [
            [(lambda idx, x=x: stats.auroc_rows(x[idx], positive)) for x in side] for side in (a, b)
        ]
        seed = int(rng.integers(1 << 30))
        interval = stats.hierarchical_bootstrap(*statistics, positive, n=300, seed=seed, paired=True)
        called.append(interval.p < 0.05)
    assert np.mean(called) <= 0.15
