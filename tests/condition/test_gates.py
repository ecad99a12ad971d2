"""Cold/warm gates: fitted thresholds, decisions, confidences, state round trips and bad parameters."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from feclip.condition.gates import GateError, make_gate, p90
from feclip.errors import FeclipError


def _images(p90_values: list[float]) -> torch.Tensor:
    """(N, 1, 10) images with pixels 0.0 .. 0.9 * scale; p90 (linear interpolation) = 0.81 * scale."""
    ramp = torch.arange(10.0) / 10
    return torch.stack([ramp * (v / 0.81) for v in p90_values])[:, None, :]


def test_p90_matches_numpy_percentile():
    images = torch.rand(3, 7, 11) * 3  # raw values above 1 are kept
    np.testing.assert_allclose(p90(images).numpy(), np.percentile(images.numpy().reshape(3, -1), 90, axis=1))


def test_p90_threshold_is_midpoint_and_confidence_is_sigmoid():
    refs = _images([0.20, 0.25, 0.35, 0.40])
    gate = make_gate("p90", temperature=0.02).fit(refs, None, ["cold", "cold", "warm", "warm"])
    assert gate.threshold == pytest.approx(0.30)
    decision = gate.decide(_images([0.28, 0.295, 0.33]), None, None)
    assert list(decision.condition) == ["cold", "cold", "warm"]
    expected = torch.sigmoid((0.30 - torch.tensor([0.28, 0.295, 0.33])) / 0.02)
    torch.testing.assert_close(decision.p_cold, expected, atol=1e-5, rtol=0)
    assert decision.mode == "hard"


def test_p90_overlapping_references_warn_and_given_threshold_is_kept():
    with pytest.warns(UserWarning, match="references overlap"):
        gate = make_gate("p90").fit(_images([0.32, 0.20, 0.30]), None, ["cold", "cold", "warm"])
    assert gate.threshold == pytest.approx(0.31)
    fixed = make_gate("p90", threshold=0.5).fit(_images([0.1, 0.2]), None, ["cold", "warm"])
    assert fixed.threshold == 0.5
    with pytest.raises(GateError, match="no threshold"):
        make_gate("p90").decide(_images([0.1]), None, None)
    with pytest.raises(GateError, match="both 'cold' and 'warm'"):
        make_gate("p90").fit(_images([0.1, 0.2]), None, ["cold", "cold"])


def test_oracle_follows_file_index_rule_and_meta_condition():
    meta = pd.DataFrame({"file_index": [0, 499, 500, 999], "condition": ["cold", "cold", "warm", "warm"]})
    by_index = make_gate("oracle", split=500).decide(None, None, meta)
    assert list(by_index.condition) == ["cold", "cold", "warm", "warm"]
    assert by_index.p_cold.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert list(make_gate("oracle", split=10).decide(None, None, meta).condition) == [
        "cold",
        "warm",
        "warm",
        "warm",
    ]
    assert list(make_gate("oracle").decide(None, None, meta).condition) == list(meta["condition"])
    with pytest.raises(GateError, match="meta=None"):
        make_gate("oracle").decide(torch.zeros(1, 2, 2), None, None)


def test_random_is_seeded_and_balanced():
    images = torch.zeros(2000, 1, 1)
    first = make_gate("random", seed=3).decide(images, None, None)
    again = make_gate("random", seed=3).decide(images, None, None)
    np.testing.assert_array_equal(first.condition, again.condition)
    assert 0.45 < (first.condition == "cold").mean() < 0.55
    other = make_gate("random", seed=4).decide(images, None, None)
    assert (other.condition != first.condition).any()


def test_clip_sim_picks_the_nearer_bank():
    e = torch.eye(4)
    refs = torch.stack([e[0], e[0] + 0.1 * e[2], e[1], e[1] + 0.1 * e[3]])
    gate = make_gate("clip_sim", topk=2, temperature=0.1).fit(None, refs, ["cold", "cold", "warm", "warm"])
    query = torch.stack([e[0] + 0.3 * e[1], e[1] + 0.3 * e[0], 5 * e[0]])
    decision = gate.decide(None, query, None)
    assert list(decision.condition) == ["cold", "warm", "cold"]
    assert decision.p_cold[0] > 0.5 > decision.p_cold[1]
    sims = torch.nn.functional.normalize(query, dim=-1) @ torch.nn.functional.normalize(refs, dim=-1).T
    margin = sims[:, :2].mean(1) - sims[:, 2:].mean(1)
    torch.testing.assert_close(
        decision.p_cold, torch.softmax(torch.stack([margin, 0 * margin], 1) / 0.1, 1)[:, 0]
    )


def test_soft_uses_base_confidence_and_mode():
    gate = make_gate("soft", base="p90", threshold=0.3, temperature=0.01)
    images = _images([0.1, 0.5])
    decision = gate.decide(images, None, None)
    base = make_gate("p90", threshold=0.3, temperature=0.01).decide(images, None, None)
    assert decision.mode == "soft" and list(decision.condition) == list(base.condition)
    torch.testing.assert_close(decision.p_cold, base.p_cold)


def test_none_gate_asks_for_the_mixed_bank():
    decision = make_gate("none").decide(torch.zeros(3, 2, 2), None, None)
    assert decision.mode == "mixed" and list(decision.condition) == ["mixed"] * 3
    assert set(decision.columns()) == {"gate", "gate_p_cold"}


@pytest.mark.parametrize("name", ["none", "oracle", "p90", "clip_sim", "random", "soft"])
def test_state_round_trip_reproduces_decisions(name):
    refs = _images([0.20, 0.25, 0.35, 0.40])
    ref_cls, cls = torch.randn(4, 8), torch.randn(6, 8)
    images = _images([0.1, 0.29, 0.31, 0.5, 0.3, 0.2])
    meta = pd.DataFrame({"file_index": range(6), "condition": ["cold"] * 3 + ["warm"] * 3})
    gate = make_gate(name).fit(refs, ref_cls, ["cold", "cold", "warm", "warm"])
    state = json.loads(json.dumps(gate.state()))
    rebuilt = make_gate(**state)
    first, second = gate.decide(images, cls, meta), rebuilt.decide(images, cls, meta)
    np.testing.assert_array_equal(first.condition, second.condition)
    torch.testing.assert_close(first.p_cold, second.p_cold)
    assert first.mode == second.mode


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        (
            "p95",
            {},
            "gating.name='p95' is not allowed; expected one of: none, oracle, p90, clip_sim, random, soft",
        ),
        ("p90", {"thresh": 0.3}, "gating=p90 has no parameter thresh; allowed: threshold, temperature"),
        ("p90", {"temperature": 0}, "gating.temperature=0"),
        ("clip_sim", {"topk": 0}, "gating.topk=0"),
        ("soft", {"base": "soft"}, "gating.base='soft'.*oracle, p90, clip_sim, random"),
        ("none", {"seed": 1}, "gating=none has no parameter seed; allowed: none"),
    ],
)
def test_bad_names_and_parameters_are_one_line_errors(name, params, match):
    with pytest.raises(FeclipError, match=match) as error:
        make_gate(name, **params)
    assert "\n" not in str(error.value)
