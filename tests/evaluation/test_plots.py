"""feclip.evaluation.plots: figures with the expected axes, lines, patches, aspect, ticks and titles; legends
outside the axes."""

import numpy as np
import pandas as pd
import pytest
import torch

from feclip.evaluation import plots
from feclip.evaluation.metrics import auroc
from feclip.evaluation.plots import PlotError

CAPTION = "random-init backbone: numbers test the pipeline, not FE-CLIP"


def _scores():
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8, 0.5, 0.6, 0.7, 0.9])  # cold AUROC 0.75, warm 1.0
    condition = np.array(["cold"] * 4 + ["warm"] * 4)
    return scores, labels, condition


def _labelled(ax):
    return [line for line in ax.lines if not line.get_label().startswith("_")]


def test_roc_curves_all_cold_warm_cross_with_the_project_auroc_in_the_legend():
    scores, labels, condition = _scores()
    fig = plots.roc_curves(scores, labels, condition, caption=CAPTION, title="C · fft · random-init")
    (ax,) = fig.axes
    assert len(_labelled(ax)) == 4 and len(ax.lines) == 5  # all, cold, warm, cross + chance
    cold, warm = condition == "cold", condition == "warm"
    subsets = {
        "all": np.ones(8, bool),
        "cold": cold,
        "warm": warm,
        "cross": (cold & (labels == 1)) | (warm & (labels == 0)),
    }
    expected = [
        f"{name} (AUROC {100 * auroc(scores[rows], labels[rows]):.1f}, n={rows.sum()})"
        for name, rows in subsets.items()
    ]
    assert [text.get_text() for text in fig.legends[0].get_texts()] == expected
    assert expected[1:3] == ["cold (AUROC 75.0, n=4)", "warm (AUROC 100.0, n=4)"]
    assert expected[3] == "cross (AUROC 50.0, n=4)"  # cold faults 0.35, 0.8 vs warm goods 0.5, 0.6
    assert fig.get_suptitle() == f"C · fft · random-init\n{CAPTION}"


def test_roc_curves_leave_out_a_one_class_subset():
    scores, labels, condition = _scores()
    labels[:4] = 0
    fig = plots.roc_curves(torch.tensor(scores), torch.tensor(labels), condition)
    ax = fig.axes[0]
    assert [line.get_label().split()[0] for line in _labelled(ax)] == ["all", "warm"]
    assert "cold" in ax.get_title() and "cross" in ax.get_title()


def test_score_histograms_four_groups_and_labelled_thresholds():
    fig = plots.score_histograms(*_scores(), thresholds={"oracle": 0.45, "val": 0.65})
    (ax,) = fig.axes
    assert len(ax.patches) == 4  # one step outline per condition x label
    assert [line.get_xdata()[0] for line in ax.lines] == [0.45, 0.65]
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend[-2:] == ["threshold oracle = 0.45", "threshold val = 0.65"]
    assert legend[0] == "cold good (n=2)"


def test_score_inputs_are_validated():
    scores, labels, condition = _scores()
    with pytest.raises(PlotError, match="expected three"):
        plots.roc_curves(scores[:-1], labels, condition)
    with pytest.raises(PlotError, match="labels has values"):
        plots.score_histograms(scores, labels * 2, condition)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("figure", ["roc", "histograms"])
def test_legends_sit_outside_the_axes(figure):
    scores, labels, condition = _scores()
    text = {"caption": CAPTION, "title": "C · feclip · default · random-init"}
    if figure == "roc":
        points = {"all": (0.25, 0.5), "cold": (0.0, 0.5)}
        fig = plots.roc_curves(
            scores, labels, condition, operating_points=points, operating_label="at thr_fa1", **text
        )
    else:
        fig = plots.score_histograms(scores, labels, condition, thresholds={"fa1 (deployable)": 0.55}, **text)
    fig.draw_without_rendering()
    (ax,), (legend,) = fig.axes, fig.legends
    assert not _overlap(legend.get_window_extent(), ax.get_window_extent())
    assert not _overlap(legend.get_window_extent(), fig._suptitle.get_window_extent())
    assert fig.bbox.contains(*legend.get_window_extent().p1 - 1)  # on the figure, not cut off


def test_roc_rings_the_operating_points_on_their_curves_and_skips_undefined_ones():
    scores, labels, condition = _scores()
    points = {"all": (0.25, 0.5), "cold": (float("nan"), 0.5), "warm": (0.5, 1.0)}
    fig = plots.roc_curves(scores, labels, condition, operating_points=points, operating_label="at thr_fa1")
    ax = fig.axes[0]
    rings = [line for line in ax.lines if line.get_label() == "_point"]
    curves = {
        line.get_label().split()[0]: line.get_color() for line in _labelled(ax) if "AUROC" in line.get_label()
    }
    assert [(r.get_xdata()[0], r.get_color()) for r in rings] == [
        (0.25, curves["all"]),
        (0.5, curves["warm"]),
    ]
    assert fig.legends[0].get_texts()[-1].get_text() == "at thr_fa1"


def _example(column, row, image=None, amap=None, **kwargs):
    image = np.random.default_rng(column * 10 + row).random((31, 95)) if image is None else image
    amap = np.full((31, 95), float(column + row)) if amap is None else amap
    return plots.MapExample(image, amap, column=column, row=row, title=f"{column},{row}", **kwargs)


def test_map_panel_layout_square_pixels_and_one_map_scale():
    examples = [_example(c, r) for c in range(4) for r in range(2)]
    fig = plots.map_panel(examples, ["a", "b", "c", "d"], 2, caption=CAPTION, title="C · fft", note="picked")
    assert fig.get_suptitle() == f"C · fft\n{CAPTION}" and fig._supxlabel.get_text() == "picked"
    assert len(fig.subfigs) == 5 and [s.get_suptitle() for s in fig.subfigs[:4]] == list("abcd")
    fig.draw_without_rendering()
    shown = [ax for sub in fig.subfigs[:4] for ax in sub.axes]
    assert len(shown) == 16
    for ax in shown:
        box = ax.get_window_extent()
        assert box.width / box.height == pytest.approx(95 / 31, rel=0.02)
        assert ax.get_xlim() == (-0.5, 94.5) and ax.get_ylim() == (30.5, -0.5)
    maps = shown[1::2]
    assert {(m.images[0].norm.vmin, m.images[0].norm.vmax) for m in maps} == {(0.0, 4.0)}
    assert all(m.images[0].get_cmap().name == plots.MAP_CMAP for m in maps)
    colorbar = fig.subfigs[-1].axes[0]
    assert colorbar.get_ylim() == (0.0, 4.0)
    width, height = fig.get_size_inches() * fig.dpi  # sized to the maps: no wide margins
    assert (
        sum(ax.get_window_extent().width * ax.get_window_extent().height for ax in shown)
        > 0.3 * width * height
    )


def test_map_panel_raw_images_each_on_their_own_percentile_scale():
    dim, bright = (
        np.linspace(0.1, 0.2, 31 * 95).reshape(31, 95),
        np.linspace(1.0, 3.0, 31 * 95).reshape(31, 95),
    )
    fig = plots.map_panel([_example(0, 0, image=dim), _example(1, 0, image=bright)], ["cold", "warm"], 1)
    raw = [sub.axes[0] for sub in fig.subfigs[:2]]
    for ax, image in zip(raw, (dim, bright), strict=True):
        low, high = np.percentile(image, plots.RAW_PERCENTILES)
        assert (ax.images[0].norm.vmin, ax.images[0].norm.vmax) == pytest.approx((low, high))
        assert ax.images[0].get_cmap().name == plots.RAW_CMAP
        assert (
            f"p1–p99 {low:.2g}–{high:.2g}" in ax.get_xlabel()
            and f"range {image.min():.2g}" in ax.get_xlabel()
        )


def test_map_panel_ticks_the_fault_rows_beside_both_panels():
    fig = plots.map_panel([_example(0, 0, fault_rows=(4, 5, 6)), _example(1, 0)], ["fault", "good"], 1)
    (raw, amap), (good_raw, _) = fig.subfigs[0].axes, fig.subfigs[1].axes
    for ax in (raw, amap):
        assert ax.get_yticks().tolist() == [4, 5, 6]
        tick = ax.yaxis.get_major_ticks()[0]
        assert tick.tick1line.get_visible() and tick.tick2line.get_visible()
        assert tick.tick1line.get_markeredgecolor() == plots.FAULT_ROW_COLOUR
        assert not ax.lines and not ax.collections  # the rows themselves stay clear
    assert "fault rows 4–6" in amap.get_xlabel()
    assert good_raw.yaxis.get_major_ticks()[0].tick1line.get_markeredgecolor() == "none"


def test_map_panel_rejects_bad_examples():
    with pytest.raises(PlotError, match="no examples"):
        plots.map_panel([], ["a"], 1)
    with pytest.raises(PlotError, match="outside"):
        plots.map_panel([_example(1, 0)], ["a"], 1)
    with pytest.raises(PlotError, match="share one"):
        plots.map_panel([_example(0, 0), _example(0, 0)], ["a"], 1)
    with pytest.raises(PlotError, match="dimensions"):
        plots.map_panel([plots.MapExample(np.zeros(5), np.zeros((2, 2)), 0, 0, "x")], ["a"], 1)


def test_variant_intervals_rejects_frames_without_the_numbers():
    with pytest.raises(PlotError, match="lack columns"):
        plots.variant_intervals({"auroc": pd.DataFrame({"variant": ["a"]})}, ["A"])
