"""feclip.evaluation.plots: figures with the expected axes, lines, patches and captions."""

import numpy as np
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


def test_roc_curves_three_curves_chance_line_and_auroc_in_legend():
    fig = plots.roc_curves(*_scores(), caption=CAPTION)
    (ax,) = fig.axes
    assert len(ax.lines) == 4  # all, cold, warm + chance
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    all_auroc = 100 * auroc(*_scores()[:2])
    assert legend == [
        f"all (AUROC {all_auroc:.1f}, n=8)",
        "cold (AUROC 75.0, n=4)",
        "warm (AUROC 100.0, n=4)",
    ]
    assert fig.get_suptitle() == CAPTION


def test_roc_curves_leave_out_a_one_class_subset():
    scores, labels, condition = _scores()
    labels[:4] = 0
    fig = plots.roc_curves(torch.tensor(scores), torch.tensor(labels), condition)
    assert len(fig.axes[0].lines) == 3 and "cold" in fig.axes[0].get_title()


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


def test_anomaly_map_grid_pairs_and_raw_values():
    images = torch.rand(5, 31, 95)
    images[0, 3, 4] = 3.0  # a bright fault pixel above 1 stays as it is
    fig = plots.anomaly_map_grid(
        images, torch.rand(5, 8, 24), [f"#{i}" for i in range(5)], ncols=3, caption=CAPTION
    )
    assert len(fig.axes) == 2 * 5 + 2  # image + map per example, two colour bars
    assert fig.axes[0].get_title(loc="left") == "#0"
    assert fig.axes[0].images[0].get_array().max() == pytest.approx(3.0)
    assert fig.axes[1].images[0].get_array().shape == (8, 24)
    assert fig.get_suptitle() == CAPTION


def test_anomaly_map_grid_rejects_mismatch():
    with pytest.raises(PlotError, match="expected \\(N, H, W\\)"):
        plots.anomaly_map_grid(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)), ["a", "b"])


def test_loss_curves_one_line_per_term():
    fig = plots.loss_curves({"total": [1.0, 0.5, 0.25], "focal": [0.5, 0.2, 0.1]})
    (ax,) = fig.axes
    assert [line.get_label() for line in ax.lines] == ["total", "focal"]
    assert ax.lines[0].get_xdata().tolist() == [1, 2, 3]
    empty = plots.loss_curves({})
    assert len(empty.axes[0].lines) == 0 and "no training" in empty.axes[0].texts[0].get_text()
