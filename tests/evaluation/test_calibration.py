"""Calibration records: percentiles of normal scores, thresholds, decisions and z-scores."""

import numpy as np
import pytest

from feclip.evaluation import calibration


def _record(scores, point="p99"):
    stats = {
        "score": np.asarray(scores, float),
        "map_max": np.asarray(scores) * 2,
        "map_topk": np.asarray(scores),
    }
    return calibration.fit(stats, [99.0, 99.5, 99.9], point, {"backbone": "feclip-tiny"})


def test_record_holds_numpy_percentiles_mean_std_and_context():
    scores = np.arange(101, dtype=float)  # percentile p of 0..100 is p itself
    record = _record(scores)
    assert record["score"]["p99"] == pytest.approx(99.0)
    assert record["score"]["p99.5"] == pytest.approx(99.5)
    assert record["map_max"]["p99.9"] == pytest.approx(2 * 99.9)
    assert record["score"]["mean"] == pytest.approx(50.0)
    assert record["score"]["std"] == pytest.approx(scores.std())
    assert record["n_normals"] == 101 and record["backbone"] == "feclip-tiny"


def test_decisions_use_the_chosen_operating_point():
    record = _record(np.arange(101, dtype=float), point="p99.5")
    assert calibration.threshold(record) == pytest.approx(99.5)
    decisions = calibration.decide(np.array([99.4, 99.6, 99.95]), record)
    assert decisions.tolist() == [False, True, True]
    assert calibration.decide(np.array([99.95]), record, "p99.9").tolist() == [True]


def test_zscore_against_the_normals():
    record = _record([1.0, 3.0])  # mean 2, std 1
    assert calibration.zscore(np.array([2.0, 4.0]), record).tolist() == pytest.approx([0.0, 2.0])


def test_false_alarm_rate_on_fresh_normals_matches_the_percentile():
    rng = np.random.default_rng(0)
    record = _record(rng.normal(size=20000))
    alarms = calibration.decide(rng.normal(size=20000), record).mean()
    assert alarms == pytest.approx(0.01, abs=0.003)


def test_bad_operating_points_are_refused():
    with pytest.raises(calibration.CalibrationError, match="p95"):
        _record([1.0, 2.0], point="p95")
    with pytest.raises(calibration.CalibrationError, match="p97"):
        calibration.threshold(_record([1.0, 2.0]), "p97")
    with pytest.raises(calibration.CalibrationError, match="equally many"):
        calibration.fit(
            {"score": np.ones(3), "map_max": np.ones(2), "map_topk": np.ones(3)}, [99.0], "p99", {}
        )


def _thresholds(scores, groups=None, rates=(0.01, 0.05)):
    return calibration.fit_thresholds(scores, groups, list(rates), n_boot=200, seed=0)


def test_false_alarm_points_hit_their_rate_on_the_normals_they_were_fitted_on():
    scores = np.random.default_rng(1).normal(size=700)
    fitted = _thresholds(scores)
    assert fitted["false_alarm_rates"] == {"fa1": 0.01, "fa5": 0.05}
    for point, rate in fitted["false_alarm_rates"].items():
        flagged = (scores > fitted["thresholds"][point]["all"]).mean()
        assert rate - 1 / len(scores) <= flagged <= rate
        assert 0 < fitted["threshold_sd"][point]["all"] < 0.3
    assert _thresholds(scores)["threshold_sd"] == fitted["threshold_sd"]  # the bootstrap is seeded


def test_per_condition_thresholds_differ_when_the_conditions_differ():
    rng = np.random.default_rng(2)
    scores = np.r_[rng.normal(0, 1, 400), rng.normal(3, 1, 400)]
    groups = np.repeat(["cold", "warm"], 400)
    fitted = _thresholds(scores, groups)
    cold, warm = (fitted["thresholds"]["fa1"][c] for c in ("cold", "warm"))
    assert warm - cold > 2 and fitted["n_normals_by"] == {"all": 800, "cold": 400, "warm": 400}
    record = calibration.fit(
        {"score": scores, "map_max": scores, "map_topk": scores}, [99.0], "fa1", {}, thresholds=fitted
    )
    flagged = calibration.decide(scores, record, "fa1", groups)
    for condition in ("cold", "warm"):
        assert flagged[groups == condition].mean() == pytest.approx(0.01, abs=1 / 400)
    assert calibration.threshold(record, condition="warm") == warm
    assert calibration.threshold(record) == fitted["thresholds"]["fa1"]["all"]  # no condition: the global one


def test_a_condition_without_normals_falls_back_to_the_global_threshold():
    fitted = _thresholds(np.arange(100.0), np.full(100, "warm"))
    assert (
        fitted["fallback"] == ["cold"]
        and fitted["thresholds"]["fa1"]["cold"] == fitted["thresholds"]["fa1"]["all"]
    )
    metrics = calibration.threshold_metrics(fitted)
    assert metrics["n_thr_normals_cold"] == 0 and np.isnan(metrics["thr_fa1_cold_sd"])
    assert {"thr_fa5", "thr_fa5_sd", "thr_fa5_warm", "n_thr_normals"} <= set(metrics)


def test_realised_rates_per_true_condition():
    fitted = _thresholds(np.arange(100.0), rates=[0.05])  # fa5 threshold 94.05
    record = {**fitted, "operating_point": "fa5"}
    scores = np.array([10.0, 99.0, 10.0, 99.0, 50.0, 95.0])
    fault = np.array([False, False, True, True, False, True])
    cold = np.array([True, True, True, True, False, False])
    metrics = calibration.rate_metrics(record, scores, fault, cold, None)
    assert metrics["far_fa5_cold"] == 0.5 and metrics["tpr_fa5_cold"] == 0.5
    assert metrics["far_fa5_warm"] == 0.0 and metrics["tpr_fa5_warm"] == 1.0
    assert metrics["far_fa5"] == pytest.approx(1 / 3) and metrics["acc_fa5"] == pytest.approx(4 / 6)


def test_a_threshold_point_can_be_the_operating_point():
    record = calibration.fit(
        {"score": np.arange(100.0), "map_max": np.ones(100), "map_topk": np.ones(100)},
        [99.0],
        "fa5",
        {},
        thresholds=_thresholds(np.arange(100.0)),
    )
    assert calibration.threshold(record) == pytest.approx(94.05)
    with pytest.raises(calibration.CalibrationError, match="fa2"):
        calibration.threshold(record, "fa2")
