"""Few-shot reference banks: context descriptors, reference selection, bank distances, gating, combination."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from feclip.condition.banks import (
    FewShotError,
    ReferenceBank,
    gated_terms,
    horizontal_context,
    select_references,
)
from feclip.condition.gates import GateDecision
from feclip.errors import FeclipError


def _meta(n_train: int = 6, n_test: int = 10) -> pd.DataFrame:
    """Train goods, then test goods and faults with shuffled file indices 0..n_test-1 each."""
    rng = np.random.default_rng(1)
    rows = [("train", 0, i) for i in range(n_train)]
    rows += [("test", 0, int(i)) for i in rng.permutation(n_test)]
    rows += [("test", 1, int(i)) for i in rng.permutation(n_test)]
    return pd.DataFrame(rows, columns=["split", "label", "file_index"])


def _taps(b: int, gh: int = 3, gw: int = 5, d: int = 4, n: int = 2) -> list[torch.Tensor]:
    return [torch.randn(b, gh, gw, d) for _ in range(n)]


def _brute_force(query: list[torch.Tensor], refs: list[torch.Tensor]) -> torch.Tensor:
    """(B, gh, gw): mean over taps of 1 - max cosine similarity, one query patch at a time."""
    b, gh, gw, _ = query[0].shape
    out = torch.zeros(b, gh, gw)
    for q, r in zip(query, refs, strict=True):
        bank = r.reshape(-1, r.shape[-1])
        for i in range(b):
            for y in range(gh):
                for x in range(gw):
                    sims = [F.cosine_similarity(q[i, y, x], p, dim=0) for p in bank]
                    out[i, y, x] += (1 - max(sims)) / len(query)
    return out


def test_mean_k_context_matches_hand_computed_row_with_zero_padding():
    row = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])  # one row, D = 1
    features = row.view(1, 1, 5, 1)
    out = horizontal_context(features, "mean_k", k=1)
    expected_ctx = torch.tensor([(0 + 1 + 2) / 3, 2.0, 3.0, 4.0, (4 + 5 + 0) / 3])
    assert out.shape == (1, 1, 5, 2)
    torch.testing.assert_close(out[0, 0, :, 0], row)
    torch.testing.assert_close(out[0, 0, :, 1], expected_ctx)


def test_multi_k_context_concatenates_f_and_each_window():
    features = torch.randn(2, 3, 6, 4)
    out = horizontal_context(features, "multi_k", ks=(1, 2))
    assert out.shape == (2, 3, 6, 12)
    torch.testing.assert_close(out[..., :4], features)
    torch.testing.assert_close(out[..., 4:8], horizontal_context(features, "mean_k", k=1)[..., 4:])
    # column 0 with k = 2: (f0 + f1 + f2 + 2 zeros) / 5, rows independent
    torch.testing.assert_close(out[:, :, 0, 8:], features[:, :, :3].sum(2) / 5)
    assert horizontal_context(features, "none") is features


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mode": "row"}, "fewshot.context='row'.*none, mean_k, multi_k"),
        ({"mode": "mean_k", "k": 0}, "context_k"),
    ],
)
def test_context_rejects_bad_settings(kwargs, match):
    with pytest.raises(FeclipError, match=match):
        horizontal_context(torch.zeros(1, 1, 3, 2), **kwargs)


def test_test_extremes_takes_lowest_and_highest_good_indices_and_excludes_them():
    meta = _meta()
    sel = select_references(meta, "test_extremes", k=2)
    assert sorted(meta.loc[sel.banks["cold"], "file_index"]) == [0, 1]
    assert sorted(meta.loc[sel.banks["warm"], "file_index"]) == [8, 9]
    assert (meta.loc[sel.positions, "split"] == "test").all() and (
        meta.loc[sel.positions, "label"] == 0
    ).all()
    assert sel.n_excluded == 4 and sorted(sel.exclude) == sorted(sel.positions)
    assert sel.keep.sum() == len(meta) - 4 and not sel.keep[sel.exclude].any()
    assert list(sel.condition) == ["cold", "cold", "warm", "warm"]


def test_train_source_is_seeded_mixed_and_excludes_nothing():
    meta = _meta()
    sel = select_references(meta, "train", k=3, seed=7)
    assert list(sel.banks) == ["mixed"] and len(sel.positions) == 3
    assert (meta.loc[sel.positions, "split"] == "train").all() and len(set(sel.positions)) == 3
    np.testing.assert_array_equal(sel.positions, select_references(meta, "train", k=3, seed=7).positions)
    assert sel.n_excluded == 0 and sel.keep.all()
    picks = {tuple(select_references(meta, "train", k=3, seed=s).positions) for s in range(10)}
    assert len(picks) > 1


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("train", 2, 0, True), "fewshot.source=train has no cold/warm labels"),
        (("test", 2, 0, False), "fewshot.source='test'.*train, test_extremes"),
        (("test_extremes", 6, 0, False), "needs 12 test/good images, found 10"),
        (("train", 0, 0, False), "fewshot.k=0"),
    ],
)
def test_select_references_rejects_bad_input(args, match):
    with pytest.raises(FeclipError, match=match):
        select_references(_meta(), *args)


def test_split_routes_feature_rows_to_banks():
    sel = select_references(_meta(), "test_extremes", k=2)
    features = [torch.arange(4.0).view(4, 1, 1, 1), torch.arange(4.0).view(4, 1, 1, 1) + 10]
    banks = sel.split(features)
    assert banks["cold"][1].flatten().tolist() == [10.0, 11.0] and banks["warm"][0].flatten().tolist() == [
        2,
        3,
    ]
    with pytest.raises(FewShotError, match="expected 4"):
        sel.split([torch.zeros(3, 1, 1, 1)])


@pytest.mark.parametrize(("context", "chunk_size"), [("none", 4096), ("none", 7), ("multi_k", 5)])
def test_distance_map_matches_brute_force(context, chunk_size):
    refs, query = _taps(2), _taps(3)  # 45 query patches: chunks of 7 and 5 leave a ragged last chunk
    bank = ReferenceBank({"mixed": refs}, context=context, context_ks=(1, 2), chunk_size=chunk_size)
    expected = _brute_force(
        [horizontal_context(t, context, ks=(1, 2)) for t in query],
        [horizontal_context(t, context, ks=(1, 2)) for t in refs],
    )
    torch.testing.assert_close(bank.distance_map(query), expected, atol=1e-5, rtol=1e-5)


def test_mixed_is_union_of_cold_and_warm_and_reference_patches_score_zero():
    cold, warm, query = _taps(1), _taps(2), _taps(2)
    bank = ReferenceBank({"cold": cold, "warm": warm}, chunk_size=4)
    union = ReferenceBank({"mixed": [torch.cat(p) for p in zip(cold, warm, strict=True)]})
    torch.testing.assert_close(bank.distance_map(query, "mixed"), union.distance_map(query))
    torch.testing.assert_close(bank.distance_map(cold, "cold"), torch.zeros(1, 3, 5), atol=1e-6, rtol=0)
    assert bank.names == ("cold", "warm", "mixed")
    with pytest.raises(FewShotError, match="bank 'hot' was not built; available: cold, warm, mixed"):
        bank.distance_map(query, "hot")
    with pytest.raises(FewShotError, match="query has 1 feature levels"):
        bank.distance_map(query[:1], "cold")


def _gated_distance(bank, query, decision):
    def terms(name, rows):
        return {"distance": bank.distance_map([q[rows] for q in query], name)}

    return gated_terms(decision, terms, len(query[0]))["distance"]


def test_gated_terms_hard_soft_and_mixed():
    bank = ReferenceBank({"cold": _taps(1), "warm": _taps(1)})
    query = _taps(3)
    d_cold, d_warm = bank.distance_map(query, "cold"), bank.distance_map(query, "warm")
    hard = GateDecision(np.array(["cold", "warm", "cold"]), torch.tensor([1.0, 0.0, 1.0]))
    expected = torch.stack([d_cold[0], d_warm[1], d_cold[2]])
    torch.testing.assert_close(_gated_distance(bank, query, hard), expected)
    soft = GateDecision(hard.condition, hard.p_cold, mode="soft")
    torch.testing.assert_close(_gated_distance(bank, query, soft), expected)
    half = GateDecision(hard.condition, torch.full((3,), 0.25), mode="soft")
    torch.testing.assert_close(_gated_distance(bank, query, half), 0.25 * d_cold + 0.75 * d_warm)
    mixed = GateDecision(np.full(3, "mixed"), torch.full((3,), 0.5), mode="mixed")
    torch.testing.assert_close(_gated_distance(bank, query, mixed), bank.distance_map(query, "mixed"))


def test_hard_gating_without_condition_banks_is_an_error():
    bank = ReferenceBank({"mixed": _taps(1)})
    decision = GateDecision(np.array(["cold"]), torch.ones(1))
    with pytest.raises(FewShotError, match="'cold' was not built; available: mixed"):
        _gated_distance(bank, _taps(1), decision)
