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
