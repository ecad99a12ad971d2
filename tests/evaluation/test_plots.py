"""feclip.evaluation.plots: figures with the expected axes, lines, patches, aspect, outlines and titles."""

import numpy as np
import pytest
import torch
from matplotlib.contour import ContourSet

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
    assert [text.get_text() for text in ax.get_legend().get_texts()] == expected
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
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[-2:] == ["threshold oracle = 0.45", "threshold val = 0.65"]
    assert legend[0] == "cold good (n=2)"


def test_score_inputs_are_validated():
    scores, labels, condition = _scores()
    with pytest.raises(PlotError, match="expected three"):
        plots.roc_curves(scores[:-1], labels, condition)
    with pytest.raises(PlotError, match="labels has values"):
        plots.score_histograms(scores, labels * 2, condition)


def test_anomaly_map_grid_pairs_raw_values_and_square_pixels():
    images = torch.rand(5, 31, 95)
    images[0, 3, 4] = 3.0  # a bright fault pixel above 1 stays as it is
    fig = plots.anomaly_map_grid(
        images, torch.rand(5, 8, 24), [f"#{i}" for i in range(5)], ncols=2, caption=CAPTION, title="C · fft"
    )
    assert len(fig.axes) == 2 * 5 + 2  # image + overlay per example, two colour bars
    assert fig.axes[0].get_title(loc="left") == "#0"
    assert fig.axes[0].images[0].get_array().max() == pytest.approx(3.0)
    overlay = fig.axes[1].images
    assert overlay[0].get_array().shape == (31, 95) and overlay[1].get_array().shape == (8, 24)
    assert overlay[1].get_extent() == [-0.5, 94.5, 30.5, -0.5]  # the map covers the image's pixel grid
    assert overlay[1].get_alpha() == 0.5
    for ax in fig.axes[:10]:
        assert ax.get_aspect() == 1.0
        assert ax.get_xlim() == (-0.5, 94.5) and ax.get_ylim() == (30.5, -0.5)
    assert fig.get_suptitle() == f"C · fft\n{CAPTION}"


def test_anomaly_map_grid_figure_size_keeps_pixels_square():
    fig = plots.anomaly_map_grid(np.zeros((4, 31, 95)), np.zeros((4, 31, 95)), list("abcd"), ncols=1)
    fig.draw_without_rendering()  # applies the layout and the axes' aspect
    boxes = [ax.get_window_extent() for ax in fig.axes[:8]]
    assert [box.width / box.height for box in boxes] == pytest.approx([95 / 31] * 8, rel=0.02)
    width, height = fig.get_size_inches() * fig.dpi  # sized to the maps: no wide margins
    assert sum(box.width * box.height for box in boxes) > 0.3 * width * height


def test_anomaly_map_grid_outlines_the_mask_else_marks_the_fault_row():
    images, maps = np.zeros((3, 31, 95)), np.zeros((3, 31, 95))
    masks = np.zeros((3, 31, 95), np.uint8)
    masks[0, 12, 10:60] = 1  # a fault band; images 1, 2 are good (empty masks)
    fig = plots.anomaly_map_grid(images, maps, list("abc"), ncols=1, masks=torch.from_numpy(masks))
    contours = [[c for c in ax.collections if isinstance(c, ContourSet)] for ax in fig.axes[:6]]
    assert [len(found) for found in contours] == [1, 1, 0, 0, 0, 0]
    assert contours[0][0].levels.tolist() == [0.5]
    rows = plots.anomaly_map_grid(images, maps, list("abc"), ncols=1, fault_rows=[12, -1, 5])
    marked = [[line.get_ydata()[0] for line in ax.lines] for ax in rows.axes[:6]]
    assert marked == [[12], [12], [], [], [5], [5]]


def test_anomaly_map_grid_rejects_mismatch():
    with pytest.raises(PlotError, match="expected \\(N, H, W\\)"):
        plots.anomaly_map_grid(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)), ["a", "b"])
    with pytest.raises(PlotError, match="masks"):
        plots.anomaly_map_grid(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), ["a", "b"], masks=np.zeros((2, 4)))
    with pytest.raises(PlotError, match="fault_rows"):
        plots.anomaly_map_grid(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), ["a", "b"], fault_rows=[1])
