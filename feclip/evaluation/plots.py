"""Figures of one HDMAP run: ROC curves, score histograms, anomaly maps, training losses.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global figure state, Agg canvas)
and saves nothing; the caller saves (`fig.savefig(path)`). Every function takes `caption`, shown as the
suptitle, e.g. "random-init backbone: numbers test the pipeline, not FE-CLIP". Inputs may be numpy arrays or
torch tensors (any device).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from feclip.errors import FeclipError
from feclip.evaluation.metrics import roc_curve

CONDITIONS = ("cold", "warm")
GROUP_STYLE = {  # (condition, label) -> (legend name, colour, line style)
    ("cold", 0): ("cold good", "tab:blue", "-"),
    ("warm", 0): ("warm good", "tab:cyan", "--"),
    ("cold", 1): ("cold fault", "tab:red", "-"),
    ("warm", 1): ("warm fault", "tab:orange", "--"),
}


class PlotError(FeclipError):
    """Inputs of a figure are inconsistent; the message names the argument and the expected shape."""


def _numpy(values) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def _score_inputs(scores, labels, condition) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (N,) float, labels (N,) int {0, 1}, condition (N,) str; one-line error on mismatch."""
    scores, labels, condition = _numpy(scores).astype(float), _numpy(labels).astype(int), _numpy(condition)
    if not (
        scores.ndim == labels.ndim == condition.ndim == 1 and len(scores) == len(labels) == len(condition)
    ):
        raise PlotError(
            f"scores {scores.shape}, labels {labels.shape}, condition {condition.shape}: "
            "expected three (N,) arrays"
        )
    if not set(np.unique(labels)) <= {0, 1}:
        raise PlotError(
            f"labels has values {sorted(set(np.unique(labels)))}; expected 0 (good) and 1 (fault)"
        )
    return scores, labels, condition.astype(str)


def _figure(width: float, height: float, caption: str) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    if caption:
        fig.suptitle(caption, color="tab:red", fontsize="medium")
    return fig


def roc_curves(scores, labels, condition, caption: str = "") -> Figure:
    """ROC of all test images and of the cold and warm subsets (AUROC in the legend) + the chance line.

    scores (N,), labels (N,) 0 good / 1 fault, condition (N,) 'cold' | 'warm'. A subset without both classes
    is left out and named in the title."""
    scores, labels, condition = _score_inputs(scores, labels, condition)
    fig = _figure(5, 4.5, caption)
    ax = fig.add_subplot()
    missing = []
    for name, rows in (("all", np.ones(len(scores), bool)), *((c, condition == c) for c in CONDITIONS)):
        fpr, tpr, auroc = roc_curve(scores[rows], labels[rows])
        if math.isnan(auroc):
            missing.append(name)
            continue
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * auroc:.1f}, n={rows.sum()})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC" + (f" (no curve for {', '.join(missing)}: one class only)" if missing else ""))
    ax.legend(loc="lower right", fontsize="small")
    return fig


def score_histograms(
    scores,
    labels,
    condition,
    thresholds: Mapping[str, float] | None = None,
    bins: int = 50,
    caption: str = "",
) -> Figure:
    """Score histograms of cold/warm x good/fault on shared bins, one vertical line per named threshold
    (e.g. {"oracle": 0.53, "val": 0.61}). scores (N,), labels (N,), condition (N,) as in `roc_curves`."""
    scores, labels, condition = _score_inputs(scores, labels, condition)
    fig = _figure(6.5, 4, caption)
    ax = fig.add_subplot()
    edges = np.histogram_bin_edges(scores, bins=bins)
    for (cond, label), (name, colour, style) in GROUP_STYLE.items():
        rows = (condition == cond) & (labels == label)
        if rows.any():
            ax.hist(
                scores[rows],
                bins=edges,
                histtype="step",
                color=colour,
                linestyle=style,
                label=f"{name} (n={rows.sum()})",
            )
    for index, (name, value) in enumerate((thresholds or {}).items()):
        ax.axvline(value, color=f"C{index + 4}", linestyle="-.", label=f"threshold {name} = {value:.4g}")
    ax.set(xlabel="anomaly score", ylabel="images", title="Score distribution by condition and label")
    ax.legend(fontsize="small")
    return fig


def anomaly_map_grid(images, maps, titles: Sequence[str], ncols: int = 3, caption: str = "") -> Figure:
    """Each raw image (N, H, W) beside its anomaly map (N, h, w), in the given order, `ncols` pairs per row.

    Images share one colour scale (raw values, never clipped: cold and warm stay comparable) and so do the
    maps; one colour bar each. Axes: 2 N panels + 2 colour bars."""
    images, maps = _numpy(images).astype(float), _numpy(maps).astype(float)
    if images.ndim != 3 or maps.ndim != 3 or len(images) != len(maps) or len(titles) != len(images):
        raise PlotError(
            f"images {images.shape}, maps {maps.shape}, {len(titles)} titles: "
            "expected (N, H, W), (N, h, w) and N titles"
        )
    if len(images) == 0:
        raise PlotError("anomaly_map_grid got no images; expected at least one")
    n_rows, n_cols = math.ceil(len(images) / ncols), min(ncols, len(images))
    fig = _figure(4.4 * n_cols + 1.6, 1.2 * n_rows + 0.6, caption)
    axes = fig.subplots(n_rows, 2 * n_cols, squeeze=False).ravel()
    image_range = {"vmin": images.min(), "vmax": images.max()}
    map_range = {"vmin": maps.min(), "vmax": maps.max()}
    for i, title in enumerate(titles):
        shown_image = axes[2 * i].imshow(images[i], cmap="gray", aspect="auto", **image_range)
        shown_map = axes[2 * i + 1].imshow(maps[i], cmap="jet", aspect="auto", **map_range)
        axes[2 * i].set_title(title, fontsize="small", loc="left")
    for ax in axes[: 2 * len(images)]:
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[2 * len(images) :]:
        fig.delaxes(ax)
    panels = list(axes[: 2 * len(images)])
    fig.colorbar(shown_image, ax=panels, label="raw value (images)", shrink=0.9)
    fig.colorbar(shown_map, ax=panels, label="anomaly map", shrink=0.9)
    return fig


def loss_curves(history: Mapping[str, Sequence[float]], caption: str = "") -> Figure:
    """One line per loss term over epochs (1-based); a note instead of lines when there was no training."""
    fig = _figure(5, 3.5, caption)
    ax = fig.add_subplot()
    for name, values in history.items():
        ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    if any(len(values) for values in history.values()):
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no training (empty history)", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="epoch", ylabel="loss", title="Training losses")
    return fig
