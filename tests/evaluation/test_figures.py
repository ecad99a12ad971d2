"""The job's figure set: the map panel's stratified pick fixed in advance, its decisions at the deployable
threshold, one colour scale for the maps, fault rows ticked from the masks; every PNG written, opened and
returned; the sweep's comparison figure."""

import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from feclip.data.hdmap import HDMAPData
from feclip.evaluation import figures, plots
from feclip.evaluation.figures import (
    image_thresholds,
    pick_examples,
    rank_positions,
    write_comparison,
    write_figures,
)


def test_rank_positions_spread_from_the_highest_to_the_lowest_score():
    assert rank_positions(100, 3) == [("highest", 0), ("median", 49), ("lowest", 99)]
    assert rank_positions(100, 1) == [("median", 49)]
    assert rank_positions(10, 4) == [("highest", 0), ("rank 4/10", 3), ("rank 7/10", 6), ("lowest", 9)]
    assert rank_positions(2, 3) == [("highest", 0), ("lowest", 1)]  # never an image twice
    assert rank_positions(1, 3) == [("only", 0)] and rank_positions(0, 3) == []


def _meta() -> pd.DataFrame:
    """Four strata by hand: cold good 0-2, cold fault 3-6 (a tie at 0.5), warm good 7-8, warm fault 9."""
    rows = [
        # condition, label, file_index, score, flag_fa1
        ("cold", 0, 10, 0.2, False),
        ("cold", 0, 11, 0.9, True),  # a false positive, the highest cold good
        ("cold", 0, 12, 0.1, False),
        ("cold", 1, 13, 0.5, False),
        ("cold", 1, 14, 0.8, True),
        ("cold", 1, 15, 0.3, False),
        ("cold", 1, 5, 0.5, False),  # ties with #13: the lower file index ranks first
        ("warm", 0, 500, 0.4, False),
        ("warm", 0, 501, 0.6, False),
        ("warm", 1, 502, 0.95, True),
    ]
    columns = ["condition", "label", "file_index", "score", "flag_fa1"]
    return pd.DataFrame(rows, columns=columns).assign(flag_val=lambda m: m["score"] > 0.45)


def test_pick_examples_takes_fixed_ranks_per_stratum_and_the_outcome_at_the_deployable_threshold():
    picks = pick_examples(_meta(), 3, "fa1")
    found = [
        tuple(r) for r in picks[["stratum", "rank_label", "position", "outcome"]].itertuples(index=False)
    ]
    assert found == [
        (0, "highest", 1, "false positive"),
        (0, "median", 0, "true negative"),
        (0, "lowest", 2, "true negative"),
        (1, "highest", 4, "hit"),
        (1, "median", 6, "miss"),  # sorted 0.8 (#14), 0.5 (#5), 0.5 (#13), 0.3 (#15): spot 3 * 1 // 2 = 1
        (1, "lowest", 5, "miss"),
        (2, "highest", 8, "true negative"),
        (2, "lowest", 7, "true negative"),
        (3, "only", 9, "hit"),
    ]
    assert picks["rank"].tolist() == [0, 1, 2, 0, 1, 2, 0, 1, 0]
    assert set(pick_examples(_meta(), 1, None)["outcome"]) == {""}
    assert figures.decision_point(_meta()) == "fa1"
    assert figures.decision_point(_meta().drop(columns="flag_fa1")) == "val"


def test_image_thresholds_are_the_ones_that_made_the_flags():
    meta = _meta()
    assert image_thresholds(meta, {"thr_fa1": 0.85}, "fa1") is None  # 0.8 flagged: not this threshold
    assert image_thresholds(meta, {"thr_fa1": 0.7}, "fa1").tolist() == [0.7] * 10
    per_condition = {"thr_fa1": 0.1, "thr_fa1_cold": 0.7, "thr_fa1_warm": 0.9}
    assert image_thresholds(meta, per_condition, "fa1").tolist() == [0.7] * 7 + [0.9] * 3
    gated = meta.assign(gate=["warm"] + ["cold"] * 9)  # the gate routed #10 to the warm threshold
    found = image_thresholds(gated, {"thr_fa1_cold": 0.7, "thr_fa1_warm": 0.15}, "fa1")
    assert found is None  # 0.2 > 0.15 would flag #10, which the run did not: neither routing made these flags
    gated = gated.assign(flag_fa1=gated["flag_fa1"] | (gated["file_index"] == 10))
    assert image_thresholds(gated, {"thr_fa1_cold": 0.7, "thr_fa1_warm": 0.15}, "fa1")[0] == 0.15


def _scored(n: int = 16, masks: bool = True) -> HDMAPData:
    """n images: cold good, cold fault, warm good, warm fault in turn; the faults' masks on rows 12-13."""
    label = np.array([0, 1] * (n // 2))
    condition = np.array(["cold"] * (n // 2) + ["warm"] * (n // 2))
    score = np.linspace(0, 1, n)
    meta = pd.DataFrame(
        {
            "label": label,
            "condition": condition,
            "file_index": range(n),
            "score": score,
            "flag_fa1": score > 0.5,
        }
    )
    gt = torch.zeros(n, 31, 95, dtype=torch.uint8)
    gt[1::2, 12:14, 20:70] = 1
    maps = torch.rand(n, 31, 95) * torch.arange(1, n + 1).view(n, 1, 1)  # map i reaches about i + 1
    images = 0.2 + 0.05 * torch.rand(n, 31, 95)
    images[5, 0, 0] = 2.9  # one bright pixel: outside the grey scale, named in the panel
    return HDMAPData(images, meta, masks=gt if masks else None, maps=maps)


METRICS = {
    "thr_fa1": 0.5,
    "thr_val": float("nan"),
    "thr_oracle": 0.45,
    "far_fa1": 0.25,
    "tpr_fa1": 0.5,
    "far_fa1_cold": 0.0,
    "tpr_fa1_cold": 0.0,
    "far_fa1_warm": 0.5,
    "tpr_fa1_warm": 1.0,
}


def test_every_figure_is_written_opens_and_is_returned_without_loss_curves(tmp_path):
    written = write_figures(tmp_path, _scored(), METRICS, caption="random init", n_examples=12, title="C")
    assert sorted(p.name for p in written) == ["anomaly_maps.png", "roc.png", "score_histograms.png"]
    assert sorted(tmp_path.glob("*.png")) == sorted(written)
    assert not (tmp_path / "loss.png").exists()
    for path in written:
        with Image.open(path) as image:
            image.verify()
    width, height = Image.open(tmp_path / "anomaly_maps.png").size
    assert width > height  # four strata side by side, three images each


@pytest.fixture
def saved(tmp_path, monkeypatch):
    """write_figures(...) -> {file name: Figure} instead of PNGs."""
    found = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kwargs: found.setdefault(path.name, fig))

    def write(scored, metrics=METRICS, caption="", n_examples=12):
        write_figures(tmp_path, scored, metrics, caption=caption, n_examples=n_examples, title="C · fft")
        return found

    return write


def _slots(fig: Figure) -> list:
    """The map panel's image axes (raw, map, raw, map, ...) column by column."""
    return [ax for sub in fig.subfigs[:-1] for ax in sub.axes if ax.images]


def test_map_panel_shows_the_strata_with_decisions_and_one_scale_for_every_map(saved):
    fig = saved(_scored(), caption="random-init backbone")["anomaly_maps.png"]
    assert fig.get_suptitle() == "C · fft\nrandom-init backbone"
    assert [sub.get_suptitle() for sub in fig.subfigs[:-1]] == [
        "cold good (n=4)\nfalse positives at thr_fa1: 0 (0.0 %)",
        "cold fault (n=4)\nhits at thr_fa1: 0 (0.0 %)",
        "warm good (n=4)\nfalse positives at thr_fa1: 4 (100.0 %)",
        "warm fault (n=4)\nhits at thr_fa1: 4 (100.0 %)",
    ]
    axes = _slots(fig)
    assert len(axes) == 4 * 3 * 2
    raw, maps = axes[0::2], axes[1::2]
    # cold fault: images 7, 5, 3, 1 by score: highest #7 (0.467, missed at 0.5), median #5, lowest #1
    assert raw[3].get_title(loc="left") == "highest · #7 · MISS\nscore 0.4667 ≤ thr_fa1 0.5"
    assert raw[9].get_title(loc="left") == "highest · #15 · HIT\nscore 1 > thr_fa1 0.5"
    assert raw[6].get_title(loc="left").startswith("highest · #14 · FALSE POSITIVE")
    norms = {(m.images[0].norm.vmin, m.images[0].norm.vmax) for m in maps}
    assert len(norms) == 1  # one colour scale for every map ...
    (low, high), shown = norms.pop(), [m.images[0].get_array() for m in maps]
    assert low == pytest.approx(min(a.min() for a in shown)) and high == pytest.approx(
        max(a.max() for a in shown)
    )
    assert fig.subfigs[-1].axes[0].get_ylabel().startswith("anomaly map")  # ... and its colour bar
    cold_fault_median = raw[4]  # image 5: its bright pixel is outside the grey scale, and the panel says so
    low, high = np.percentile(np.asarray(cold_fault_median.images[0].get_array()), [1, 99])
    assert cold_fault_median.images[0].norm.vmax == pytest.approx(high) and high < 2.9
    assert "(range 0.2–2.9)" in cold_fault_median.get_xlabel()


def test_map_panel_pixels_are_square_and_nearest(saved):
    fig = saved(_scored())["anomaly_maps.png"]
    fig.draw_without_rendering()
    for ax in _slots(fig):
        box = ax.get_window_extent()
        assert box.width / box.height == pytest.approx(95 / 31, rel=0.02)
        assert ax.images[0].get_interpolation() == "nearest"


def test_fault_rows_are_ticks_beside_the_image_from_the_mask(saved):
    axes = _slots(saved(_scored())["anomaly_maps.png"])
    cold_good, cold_fault = axes[0], axes[6]
    assert cold_fault.get_yticks().tolist() == [12, 13] and axes[7].get_yticks().tolist() == [12, 13]
    ticks = cold_fault.yaxis.get_major_ticks()
    assert ticks[0].tick1line.get_visible() and ticks[0].tick2line.get_visible()  # left and right
    assert ticks[0].tick1line.get_markeredgecolor() != "none"
    assert not cold_fault.lines and not cold_fault.collections  # nothing drawn over the image
    assert cold_good.yaxis.get_major_ticks()[0].tick1line.get_markeredgecolor() == "none"
    assert "fault rows 12–13" in axes[7].get_xlabel()


def test_fault_rows_are_the_mask_rows_with_any_fault_pixel():
    mask = np.zeros((31, 95), np.uint8)
    mask[[2, 5, 6], 10] = 1
    assert plots.mask_rows(torch.from_numpy(mask)) == (2, 5, 6)
    assert plots.mask_rows(np.zeros((31, 95))) == ()


def test_map_panel_says_when_a_stratum_has_no_image_and_without_masks_ticks_nothing(saved):
    scored = _scored(masks=False)
    warm = scored.meta["condition"] == "warm"
    scored = scored.subset(~(warm & (scored.meta["label"] == 0)).to_numpy())
    fig = saved(scored, n_examples=4)["anomaly_maps.png"]  # one per stratum: the median
    subs = fig.subfigs[:-1]
    assert [len([ax for ax in sub.axes if ax.images]) for sub in subs] == [2, 2, 0, 2]
    assert [t.get_text() for t in subs[2].axes[0].texts] == ["no image"]
    assert all(ax.get_yticks().tolist() == [0] for sub in subs for ax in sub.axes if ax.images)


def test_roc_marks_the_deployable_operating_points_and_histograms_draw_the_thresholds(saved):
    found = saved(_scored())
    (roc,) = found["roc.png"].axes
    rings = [(line.get_xdata()[0], line.get_ydata()[0]) for line in roc.lines if line.get_label() == "_point"]
    assert rings == [(0.25, 0.5), (0.0, 0.0), (0.5, 1.0)]  # all, cold, warm
    legend = [t.get_text() for t in found["roc.png"].legends[0].get_texts()]
    assert legend[-1] == "at thr_fa1 (deployable)"
    texts = [t.get_text() for t in found["score_histograms.png"].legends[0].get_texts()]
    assert texts[-2:] == [
        "threshold fa1 (deployable) = 0.5",
        "threshold oracle (reads the test labels) = 0.45",
    ]


def _table(metric: str, cells: list[tuple], random_init: int = 0) -> pd.DataFrame:
    numbers = pd.DataFrame(cells, columns=["variant", "domain", "mean", "lo", "hi", "n", "seed_invariant"])
    table = pd.DataFrame()
    table.attrs.update(numbers=numbers, random_init=random_init, n_runs=len(cells), experiment="2025/x")
    return table


def test_the_sweep_comparison_has_each_variant_per_domain_with_its_interval(tmp_path, monkeypatch):
    cells = [
        ("feclip · dct", "A", 90.0, 88.0, 92.0, 1, False),
        ("feclip · fft", "A", 91.0, float("nan"), float("nan"), 1, False),
        ("feclip · dct", "C", 70.0, 65.0, 75.0, 1, False),
    ]
    tables = {
        "auroc": _table("auroc", cells, random_init=3),
        "ap": _table("ap", cells),
        "acc_fa1": _table("acc_fa1", cells),
    }
    path = write_comparison(tmp_path / "report", tables)
    assert path == tmp_path / "report" / "comparison.png"
    with Image.open(path) as image:
        image.verify()
    assert write_comparison(tmp_path / "none", {"ap": tables["ap"]}) is None
    assert not (tmp_path / "none").exists()
    found = {}
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **kwargs: found.setdefault("fig", fig))
    write_comparison(tmp_path / "again", tables)
    fig = found["fig"]
    assert "3 of 3 runs random-init" in fig.get_suptitle()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["auroc (x100) · A", "auroc (x100) · C", "acc_fa1 (x100) · A", "acc_fa1 (x100) · C"]
    auroc_a = fig.axes[0]
    assert [t.get_text() for t in auroc_a.get_yticklabels()] == ["feclip · dct", "feclip · fft"]
    assert len(auroc_a.containers) == 1  # dct has an interval (a bar), fft only its mean (a ring)
    assert auroc_a.lines[-1].get_markerfacecolor() == "none" and auroc_a.lines[-1].get_xdata()[0] == 91.0
