"""feclip.metrics against hand-computed cases, brute-force references and bad input."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.functional.classification import binary_auroc, binary_average_precision

from feclip.evaluation import metrics
from feclip.evaluation.metrics import (
    MetricsError,
    benchmark_metrics,
    gate_accuracy,
    hdmap_metrics,
    pixel,
    pixel_auroc,
    pro_score,
)

# Hand case, sorted by score: 0.1 good(c), 0.35 fault(c), 0.5 good(w), 0.6 good(w), 0.7 good(c) / 0.7 fault(w)
# (a tie), 0.8 fault(c), 0.9 fault(w).
SCORES = np.array([0.1, 0.7, 0.35, 0.8, 0.5, 0.6, 0.7, 0.9])
LABELS = np.array([0, 0, 1, 1, 0, 0, 1, 1])
CONDITION = np.array(["cold"] * 4 + ["warm"] * 4)


def hand_metrics(**kwargs) -> dict:
    return hdmap_metrics(SCORES, LABELS, CONDITION, **kwargs)


# ------------------------------------------------------------------------------------------- hdmap_metrics
def test_auroc_subsets_by_hand_with_ties():
    m = hand_metrics()
    # all: faults 0.35 (beats 1 good), 0.8 (4), 0.7 (3 + tie 1/2), 0.9 (4) -> 12.5 / 16
    assert m["auroc"] == pytest.approx(12.5 / 16)
    assert m["auroc_cold"] == pytest.approx(3 / 4)  # faults {0.35, 0.8} vs goods {0.1, 0.7}
    assert m["auroc_warm"] == pytest.approx(1.0)  # faults {0.7, 0.9} vs goods {0.5, 0.6}
    assert m["auroc_cross"] == pytest.approx(2 / 4)  # cold faults {0.35, 0.8} vs warm goods {0.5, 0.6}
    assert m["auroc_cross2"] == pytest.approx(3.5 / 4)  # warm faults {0.7, 0.9} vs cold goods {0.1, 0.7}: tie


def test_ap_f1_by_hand_ties_one_threshold():
    m = hand_metrics()
    # thresholds 0.9, 0.8, 0.7 (tie: TP 3, FP 1), 0.6, 0.5, 0.35 (TP 4, FP 3), 0.1; recall steps of 1/4 at
    # precisions 1, 1, 3/4, 4/7
    assert m["ap"] == pytest.approx(0.25 * (1 + 1 + 3 / 4 + 4 / 7))
    # F1 = 2 TP / (TP + FP + 4): 2/5, 4/6, 6/8 (at 0.7), 6/9, 6/10, 8/11, 8/12
    assert m["f1_max"] == pytest.approx(6 / 8)
    assert m["tpr_at_fpr1"] == pytest.approx(2 / 4)  # FPR <= 1% means no false alarm here


def test_oracle_threshold_is_first_best_test_percentile():
    m = hand_metrics()
    # best accuracy 6/8 for t in (0.6, 0.8]; the first percentile there is the 43rd: 0.6 + 0.01 * (0.7 - 0.6)
    assert m["thr_oracle"] == pytest.approx(0.601)
    assert m["acc_oracle"] == pytest.approx(6 / 8)
    assert m["acc_oracle_cold"] == pytest.approx(2 / 4)  # 0.7 good flagged, 0.35 fault missed
    assert m["acc_oracle_warm"] == pytest.approx(4 / 4)


def test_oracle_flags_scores_equal_to_the_threshold():
    scores = np.arange(101.0)  # with 101 scores the 0th..100th percentiles are the scores themselves
    m = hdmap_metrics(scores, scores >= 60, ["cold", "warm"] * 50 + ["cold"])
    assert m["thr_oracle"] == 60.0 and m["acc_oracle"] == 1.0  # score >= 60 is fault (t = 59 with '>')


def test_acc_val_uses_a_percentile_of_val_scores_and_a_strict_threshold():
    m = hand_metrics(val_scores=np.linspace(0.0, 0.6, 101), val_percentile=99.0)
    assert m["thr_val"] == pytest.approx(0.594)  # 99th percentile of 0, 0.006, ..., 0.6
    # flagged: 0.6 g, 0.7 g, 0.7 f, 0.8 f, 0.9 f; missed 0.35 f -> 5 / 8; cold 2 / 4; warm 3 / 4
    assert (m["acc_val"], m["acc_val_cold"], m["acc_val_warm"]) == pytest.approx((5 / 8, 2 / 4, 3 / 4))
    strict = hand_metrics(val_scores=torch.tensor([0.2, 0.6], dtype=torch.float64), val_percentile=100.0)
    assert strict["thr_val"] == pytest.approx(0.6)  # the 0.6 good equals the threshold: not flagged
    assert (strict["acc_val"], strict["acc_val_cold"], strict["acc_val_warm"]) == pytest.approx(
        (6 / 8, 0.5, 1)
    )


def test_without_val_scores_the_val_keys_are_nan():
    m = hand_metrics()
    for key in ("acc_val", "acc_val_cold", "acc_val_warm", "thr_val"):
        assert math.isnan(m[key])


def test_tpr_at_fpr1_takes_the_best_operating_point_without_interpolation():
    goods = np.arange(200.0)  # 1% of 200 = 2 false alarms allowed (FPR exactly 0.01 counts)
    faults = np.array([198.5, 197.5, 197.0] + [10.0] * 7)  # 197.0 ties the 3rd highest good
    labels = np.r_[np.zeros(200), np.ones(10)]
    m = hdmap_metrics(np.r_[goods, faults], labels, ["cold", "warm"] * 105)
    assert m["tpr_at_fpr1"] == pytest.approx(2 / 10)  # threshold 197.5: FP = 2 (198, 199), TP = 2


def test_scores_beyond_unit_range_keep_their_order():
    m = hdmap_metrics(np.array([20.0, 21.0, 22.0, 23.0]), [0, 1, 0, 1], ["cold", "cold", "warm", "warm"])
    assert m["auroc"] == pytest.approx(3 / 4)  # a sigmoid in float32 would tie them all (0.5)


def test_matches_torchmetrics_on_random_scores_with_ties():
    gen = np.random.default_rng(0)
    labels = gen.integers(0, 2, 500)
    scores = np.clip(np.round(gen.normal(0.4 + 0.2 * labels, 0.15), 2), 0, 1)  # in [0, 1]: no sigmoid
    m = hdmap_metrics(scores, labels, np.where(gen.random(500) < 0.5, "cold", "warm"))
    s, y = torch.from_numpy(scores), torch.from_numpy(labels)
    assert m["auroc"] == pytest.approx(binary_auroc(s, y).item(), abs=1e-6)  # torchmetrics: float32 result
    assert m["ap"] == pytest.approx(binary_average_precision(s, y).item(), abs=1e-6)


def test_torch_inputs_give_the_numpy_result():
    m = hdmap_metrics(torch.tensor(SCORES), torch.tensor(LABELS), list(CONDITION), torch.tensor([0.2, 0.6]))
    expected = hand_metrics(val_scores=np.array([0.2, 0.6]))
    assert m == pytest.approx(expected)


def test_single_class_and_empty_subsets_are_nan_with_a_warning():
    with pytest.warns(UserWarning) as caught:
        m = hdmap_metrics(SCORES, LABELS, ["cold"] * 8)
    assert math.isnan(m["auroc_warm"]) and math.isnan(m["acc_oracle_warm"])
    assert math.isnan(m["auroc_cross"]) and math.isnan(m["auroc_cross2"])  # only cold goods / cold faults
    assert m["auroc_cold"] == pytest.approx(12.5 / 16)
    messages = " ".join(str(w.message) for w in caught)
    assert "subset 'warm' is empty" in messages
    assert "subset 'cross' has only fault samples" in messages
    with pytest.warns(UserWarning) as caught:
        m = hdmap_metrics([0.1, 0.2], [0, 0], ["cold", "warm"])
    assert "subset 'all' has only good samples (n=2)" in str(caught[0].message)
    assert math.isnan(m["auroc"]) and math.isnan(m["f1_max"])
    assert m["acc_oracle"] == 0.5  # the top candidate (100th percentile = max score) still flags the max


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": LABELS[:-1]}, "labels: expected shape"),
        ({"condition": ["cold"] * 7 + ["hot"]}, "condition: unknown value.*hot"),
        ({"condition": CONDITION[:-1]}, "condition: expected shape"),
        ({"scores": np.r_[SCORES[:-1], np.nan]}, "scores: expected finite"),
        ({"scores": np.r_[SCORES[:-1], np.inf]}, "scores: expected finite"),
        ({"labels": np.r_[LABELS[:-1], 2]}, "labels: expected labels 0"),
        ({"val_scores": np.array([0.1, np.nan])}, "val_scores: expected finite"),
        ({"val_scores": np.array([])}, "val_scores: expected at least one"),
        ({"val_scores": np.array([0.1]), "val_percentile": 101.0}, "val_percentile"),
    ],
)
def test_bad_input_is_a_one_line_error(kwargs, match):
    args = {"scores": SCORES, "labels": LABELS, "condition": CONDITION, **kwargs}
    with pytest.raises(MetricsError, match=match) as error:
        hdmap_metrics(**args)
    assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------- pixel_auroc
def test_pixel_auroc_by_hand_counts_normal_images():
    maps = np.array([[[0.1, 0.5, 0.9], [0.5, 0.2, 0.3]]])
    masks = np.array([[[0, 1, 1], [0, 0, 0]]], dtype=np.uint8)
    # anomalous {0.5, 0.9} vs normal {0.1, 0.5, 0.2, 0.3}: 3 + 1/2 + 4 = 7.5 of 8 pairs
    assert pixel_auroc(maps, masks) == pytest.approx(7.5 / 8)
    maps2 = np.concatenate([maps, np.full((1, 2, 3), 0.95)])  # a normal image scoring above everything
    masks2 = np.concatenate([masks, np.zeros((1, 2, 3), dtype=np.uint8)])
    assert pixel_auroc(torch.tensor(maps2).half(), torch.tensor(masks2)) == pytest.approx(7.5 / 20)


def test_pixel_auroc_matches_torchmetrics():
    gen = np.random.default_rng(1)
    masks = gen.random((6, 9, 7)) < 0.2
    maps = np.round(gen.random((6, 9, 7)) * 0.6 + 0.4 * masks, 1)
    expected = binary_auroc(torch.from_numpy(maps).flatten(), torch.from_numpy(masks).flatten().long())
    assert pixel_auroc(maps, masks) == pytest.approx(expected.item(), abs=1e-6)


def test_pixel_auroc_without_anomalous_pixels_is_nan():
    with pytest.warns(UserWarning, match="subset 'all pixels' has only good samples"):
        assert math.isnan(pixel_auroc(np.ones((2, 3, 3)), np.zeros((2, 3, 3))))


# --------------------------------------------------------------------------------------------------- PRO
def brute_force_pro(maps: np.ndarray, masks: np.ndarray, max_fpr: float) -> float:
    """Exact PRO: every distinct value as threshold, every region checked one by one."""
    regions = []
    for i, mask in enumerate(masks.astype(bool)):
        labelled, count = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labelled == k) for k in range(1, count + 1)]
    normal = ~masks.astype(bool)
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        overlap = [hit[i][region].mean() for i, region in regions]
        points.append(((hit & normal).sum() / normal.sum(), float(np.mean(overlap))))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            x1, y1 = max_fpr, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def one_region_case():
    """One 4-pixel region scored 1.0, 0.9, 0.75, 0.2; ten normal pixels 0.05, 0.15, ..., 0.95 (0.75 tied)."""
    normal = [0.05, 0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85, 0.95]
    maps = np.array([[[1.0, 0.9, 0.75, 0.2, *normal]]])
    masks = np.zeros_like(maps, dtype=np.uint8)
    masks[0, 0, :4] = 1
    return maps, masks


def test_pro_one_region_by_hand():
    maps, masks = one_region_case()
    # curve: (0,0) (0,.25) (.1,.25) (.1,.5) (.2,.5) (.3,.75: the tie, a diagonal step) ...
    # area to 0.3 = .1*.25 + .1*.5 + .1*(.5+.75)/2 = 0.1375; to 0.25 (PRO interpolated: .625) = 0.103125
    assert pro_score(maps, masks) == pytest.approx(0.1375 / 0.3)
    assert pro_score(maps, masks, max_fpr=0.25) == pytest.approx(0.103125 / 0.25)
    assert pro_score(maps, masks) == pytest.approx(brute_force_pro(maps, masks, 0.3))


def test_pro_averages_regions_not_pixels():
    maps = np.linspace(0.05, 0.95, 2 * 3 * 6).reshape(2, 3, 6)  # normal pixels: distinct values in (0, 1)
    masks = np.zeros((2, 3, 6), dtype=np.uint8)
    masks[0, :2, :4] = 1  # big region (8 pixels), fully detected at t = 1
    maps[0, :2, :4] = 1.0
    masks[1, 0, :2] = 1  # small region (2 pixels), half detected at t = 1, the other pixel below everything
    maps[1, 0, :2] = (1.0, 0.0)
    # at t = 1: FPR 0, PRO = (1 + 1/2) / 2 = 0.75 (pixel recall would be 9/10); flat until FPR 1 -> 0.75
    assert pro_score(maps, masks) == pytest.approx(0.75)
    assert pro_score(maps, masks) == pytest.approx(brute_force_pro(maps, masks, 0.3))


def test_pro_regions_are_8_connected():
    maps = np.full((1, 3, 4), 0.5)
    masks = np.zeros((1, 3, 4), dtype=np.uint8)
    masks[0, 0, :2] = 1  # (0,0) (0,1) and the diagonal neighbour (1,2): one region of 3 pixels
    masks[0, 1, 2] = 1
    maps[0, 0, :2] = 0.0
    maps[0, 1, 2] = 1.0
    assert pro_score(maps, masks) == pytest.approx(1 / 3)  # 4-connectivity would give (0 + 1) / 2


def test_pro_perfect_and_constant_maps():
    masks = np.zeros((3, 5, 5), dtype=np.uint8)
    masks[0, 1:3, 1:4] = 1
    masks[1, 4, 4] = 1
    assert pro_score(masks.astype(np.float32), masks) == pytest.approx(1.0)
    # constant map: one threshold, the curve is the diagonal (0,0)-(1,1): area max_fpr^2 / 2 -> max_fpr / 2
    assert pro_score(np.full((3, 5, 5), 7.0), masks) == pytest.approx(0.15)
    assert pro_score(np.full((3, 5, 5), 7.0), masks, max_fpr=1.0) == pytest.approx(0.5)


def random_case(seed: int, n: int = 12, size: int = 16):
    gen = np.random.default_rng(seed)
    blobs = ndimage.gaussian_filter(gen.random((n, size, size)), sigma=(0, 2, 2))
    masks = (blobs > np.quantile(blobs, 0.9)).astype(np.uint8)
    masks[: n // 3] = 0  # some normal images
    maps = ndimage.gaussian_filter(gen.random((n, size, size)) + 0.3 * masks, sigma=(0, 1, 1))
    return maps.astype(np.float32), masks


def test_pro_exact_when_levels_cover_all_values_and_across_chunks(monkeypatch):
    maps, masks = random_case(0)
    exact = brute_force_pro(maps, masks, 0.3)
    assert pro_score(maps, masks, n_levels=maps.size) == pytest.approx(exact, abs=1e-12)
    monkeypatch.setattr(pixel, "PRO_CHUNK_PIXELS", 16 * 16 * 5)  # chunks of 5 maps
    assert pro_score(maps, masks, n_levels=maps.size) == pytest.approx(exact, abs=1e-12)


@pytest.mark.parametrize("n_levels", [20, 100])
def test_pro_subsampled_levels_stay_close_to_exact(monkeypatch, n_levels):
    maps, masks = random_case(1)
    exact = brute_force_pro(maps, masks, 0.3)
    monkeypatch.setattr(pixel, "PRO_SAMPLE_PIXELS", maps.size // 2)  # thresholds from a sample
    assert abs(pro_score(maps, masks, n_levels=n_levels) - exact) <= 1 / n_levels


def test_pro_undefined_and_bad_input():
    with pytest.warns(UserWarning, match="PRO set to NaN"):
        assert math.isnan(pro_score(np.ones((1, 2, 2)), np.zeros((1, 2, 2))))
    with pytest.raises(MetricsError, match="masks: expected values 0 or 1"):
        pro_score(np.ones((1, 2, 2)), np.full((1, 2, 2), 0.5))
    with pytest.raises(MetricsError, match="maps/masks: expected equal"):
        pro_score(np.ones((1, 2, 2)), np.zeros((1, 2, 3)))
    with pytest.raises(MetricsError, match="maps: expected finite"):
        pro_score(np.full((1, 2, 2), np.nan), np.eye(2)[None])
    with pytest.raises(MetricsError, match="max_fpr"):
        pro_score(np.ones((1, 2, 2)), np.eye(2)[None], max_fpr=0.0)


# ------------------------------------------------------------------------------------- benchmark_metrics
def benchmark_case():
    """Category a: scores and maps perfect. Category b: image AUROC 3/4, constant maps."""
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9, 0.85, 0.95])
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    masks = np.zeros((8, 2, 2), dtype=np.uint8)
    masks[labels == 1, 0, 0] = 1
    maps = masks.astype(np.float32)
    maps[4:] = 0.5
    return scores, labels, maps, masks, np.array(["a"] * 4 + ["b"] * 4)


def test_benchmark_metrics_per_category_and_macro_mean():
    m = benchmark_metrics(*benchmark_case())
    assert m["a/image_auroc"] == 1.0 and m["a/image_ap"] == 1.0
    assert m["a/pixel_auroc"] == 1.0 and m["a/pro"] == pytest.approx(1.0)
    assert m["b/image_auroc"] == pytest.approx(3 / 4)  # faults {0.85, 0.95} vs goods {0.8, 0.9}
    assert m["b/image_ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert m["b/pixel_auroc"] == pytest.approx(0.5) and m["b/pro"] == pytest.approx(0.15)
    assert m["image_auroc"] == pytest.approx((1 + 3 / 4) / 2)
    assert m["image_ap"] == pytest.approx((1 + 5 / 6) / 2)
    assert m["pixel_auroc"] == pytest.approx(0.75) and m["pro"] == pytest.approx(0.575)
    # pooling both categories would give 11/16 image AUROC: faults beat 2, 2, 3, 4 of the 4 goods
    scores, labels, *_ = benchmark_case()
    pooled = binary_auroc(torch.from_numpy(scores), torch.from_numpy(labels)).item()
    assert pooled == pytest.approx(11 / 16) and m["image_auroc"] != pytest.approx(pooled)


def test_benchmark_single_class_category_is_nan_and_propagates():
    scores, labels, maps, masks, categories = benchmark_case()
    categories[2:4] = "c"  # category a keeps only good images
    with pytest.warns(UserWarning) as caught:
        m = benchmark_metrics(scores, labels, maps, masks, categories)
    messages = " ".join(str(w.message) for w in caught)
    assert "subset 'a' has only good samples" in messages and "subset 'c' has only fault samples" in messages
    assert math.isnan(m["a/image_auroc"]) and math.isnan(m["a/pro"]) and math.isnan(m["image_auroc"])


def test_benchmark_bad_input():
    scores, labels, maps, masks, categories = benchmark_case()
    with pytest.raises(MetricsError, match="maps/categories"):
        benchmark_metrics(scores, labels, maps, masks, categories[:-1])
    with pytest.raises(MetricsError, match="maps/categories"):
        benchmark_metrics(scores, labels, maps[:-1], masks[:-1], categories)


# ------------------------------------------------------------------------------------------ gate_accuracy
def test_gate_accuracy_groups_by_hand():
    truth = ["cold", "cold", "warm", "warm", "cold", "cold", "warm", "warm"]
    pred = ["cold", "warm", "warm", "warm", "cold", "cold", "cold", "cold"]
    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    m = gate_accuracy(np.array(pred), truth, torch.tensor(labels))
    assert m == pytest.approx(
        {
            "gate_acc": 5 / 8,
            "gate_acc_good_cold": 1 / 2,
            "gate_acc_good_warm": 1.0,
            "gate_acc_fault_cold": 1.0,
            "gate_acc_fault_warm": 0.0,
        }
    )


def test_gate_accuracy_empty_group_and_bad_values():
    with pytest.warns(UserWarning) as caught:
        m = gate_accuracy(["cold", "warm"], ["cold", "cold"], [0, 1])
    assert [str(w.message).split(";")[0] for w in caught] == [
        "metrics: subset 'good_warm' is empty",
        "metrics: subset 'fault_warm' is empty",
    ]
    assert m["gate_acc"] == 0.5 and math.isnan(m["gate_acc_fault_warm"])
    with pytest.raises(MetricsError, match="pred: unknown value.*mixed"):
        gate_accuracy(["mixed", "cold"], ["cold", "cold"], [0, 1])
    with pytest.raises(MetricsError, match="pred: expected shape"):
        gate_accuracy(["cold"], ["cold", "cold"], [0, 1])


def test_no_warning_when_every_subset_is_defined():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hand_metrics(val_scores=np.array([0.2, 0.6]))


def _pairwise_auroc(scores, labels) -> float:
    """Mann-Whitney: P(fault score > good score) + 1/2 P(tie), by brute force over all pairs."""
    faults, goods = scores[labels == 1], scores[labels == 0]
    wins = [1.0 if f > g else 0.5 if f == g else 0.0 for f, g in itertools.product(faults, goods)]
    return float(np.mean(wins))


def test_roc_curve_hand_cases():
    fpr, tpr, auroc = metrics.roc_curve(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert auroc == pytest.approx(0.75)
    assert fpr.tolist() == [0, 0, 0.5, 0.5, 1] and tpr.tolist() == [0, 0.5, 0.5, 1, 1]
    assert metrics.roc_curve(np.array([0.5, 0.5]), np.array([0, 1]))[2] == pytest.approx(0.5)
    assert np.isnan(metrics.roc_curve(np.array([0.1, 0.2]), np.array([1, 1]))[2])


def test_roc_curve_matches_pairwise_auroc_with_ties():
    rng = np.random.default_rng(0)
    scores, labels = rng.integers(0, 6, 60).astype(float), rng.integers(0, 2, 60)
    assert metrics.roc_curve(scores, labels)[2] == pytest.approx(_pairwise_auroc(scores, labels))
