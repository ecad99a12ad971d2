"""Figures of one HDMAP run: ROC curves (all, cold, warm, cross), score histograms, anomaly maps.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global figure state, Agg canvas)
and saves nothing; the caller saves (`fig.savefig(path)`). Every function takes `title` (e.g. "C · fft ·
random-init") and `caption` (e.g. "random-init backbone: numbers test the pipeline, not FE-CLIP"), shown
together as the suptitle. Inputs may be numpy arrays or torch tensors (any device).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure

from feclip.errors import FeclipError
from feclip.evaluation.metrics import roc_curve

PANEL_INCHES = 3.0  # the longer side of one map panel
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


def _figure(width: float, height: float, caption: str, title: str = "") -> Figure:
    """A constrained-layout figure; suptitle = `title` over `caption` (red when there is a caption)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    text = "\n".join(part for part in (title, caption) if part)
    if text:
        fig.suptitle(text, color="tab:red" if caption else "black", fontsize="medium")
    return fig


def roc_subsets(labels: np.ndarray, condition: np.ndarray) -> dict[str, np.ndarray]:
    """The ROC subsets (N,) bool of labels (N,) 0/1 and condition (N,) 'cold' | 'warm', as in `hdmap_metrics`:
    all, cold, warm and cross (cold fault vs warm good)."""
    cold, fault = condition == "cold", labels == 1
    return {
        "all": np.ones(len(labels), bool),
        "cold": cold,
        "warm": condition == "warm",
        "cross": (cold & fault) | ((condition == "warm") & ~fault),
    }


def roc_curves(scores, labels, condition, caption: str = "", title: str = "") -> Figure:
    """ROC of all test images, cold (fault vs good), warm and cross (cold fault vs warm good), AUROC and n in
    the legend, + the unlabelled chance line.

    scores (N,), labels (N,) 0 good / 1 fault, condition (N,) 'cold' | 'warm'. A subset without both classes
    is left out and named in the axes title."""
    scores, labels, condition = _score_inputs(scores, labels, condition)
    fig = _figure(5, 4.5, caption, title)
    ax = fig.add_subplot()
    missing = []
    for name, rows in roc_subsets(labels, condition).items():
        fpr, tpr, auroc = roc_curve(scores[rows], labels[rows])
        if math.isnan(auroc):
            missing.append(name)
            continue
        ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * auroc:.1f}, n={rows.sum()})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="_chance")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_title("ROC" + (f" (no curve for {', '.join(missing)}: one class only)" if missing else ""))
    if len(ax.lines) > 1:
        ax.legend(loc="lower right", fontsize="small")
    return fig


def score_histograms(
    scores,
    labels,
    condition,
    thresholds: Mapping[str, float] | None = None,
    bins: int = 50,
    caption: str = "",
    title: str = "",
) -> Figure:
    """Score histograms of cold/warm x good/fault on shared bins, one vertical line per named threshold
    (e.g. {"oracle": 0.53, "val": 0.61}). scores (N,), labels (N,), condition (N,) as in `roc_curves`."""
    scores, labels, condition = _score_inputs(scores, labels, condition)
    fig = _figure(6.5, 4, caption, title)
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


def _map_inputs(images, maps, titles, masks, fault_rows) -> tuple:
    """images (N, H, W), maps (N, h, w), masks (N, H, W) or None, fault_rows (N,) or None as numpy; one-line
    error on mismatch."""
    images, maps = _numpy(images).astype(float), _numpy(maps).astype(float)
    if images.ndim != 3 or maps.ndim != 3 or len(images) != len(maps) or len(titles) != len(images):
        raise PlotError(
            f"images {images.shape}, maps {maps.shape}, {len(titles)} titles: "
            "expected (N, H, W), (N, h, w) and N titles"
        )
    if len(images) == 0:
        raise PlotError("anomaly_map_grid got no images; expected at least one")
    if masks is not None:
        masks = _numpy(masks).astype(float)
        if masks.shape != images.shape:
            raise PlotError(f"masks {masks.shape}: expected the images' shape {images.shape}")
    if fault_rows is not None:
        fault_rows = _numpy(fault_rows).astype(int)
        if fault_rows.shape != (len(images),):
            raise PlotError(f"fault_rows {fault_rows.shape}: expected ({len(images)},), -1 where unknown")
    return images, maps, masks, fault_rows


def _outline(ax, mask: np.ndarray | None, row: int | None) -> None:
    """The ground-truth mask (H, W) outlined at 0.5 when it has a fault pixel, else the fault row (>= 0)."""
    if mask is not None and mask.any():
        ax.contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
    elif row is not None and row >= 0:
        ax.axhline(row, color="lime", linestyle="--", linewidth=0.8, alpha=0.8)


def _draw_pair(axes, image, amap, mask, row, image_range, map_range):
    """Raw image (H, W) | image + map (h, w) stretched to the image's pixel grid at alpha 0.5, both outlined;
    square pixels. Returns (image artist, map artist)."""
    height, width = image.shape
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    shown_image = axes[0].imshow(image, cmap="gray", aspect="equal", **image_range)
    axes[1].imshow(image, cmap="gray", aspect="equal", **image_range)
    shown_map = axes[1].imshow(amap, cmap="jet", alpha=0.5, aspect="equal", extent=extent, **map_range)
    for ax in axes:
        _outline(ax, mask, row)
        ax.set(xlim=extent[:2], ylim=extent[2:], xticks=[], yticks=[])
    return shown_image, shown_map


def anomaly_map_grid(
    images,
    maps,
    titles: Sequence[str],
    ncols: int = 2,
    caption: str = "",
    title: str = "",
    masks=None,
    fault_rows=None,
) -> Figure:
    """Each raw image (N, H, W) beside its anomaly map (N, h, w) laid semi-transparently over it, in the given
    order, `ncols` pairs per row, square pixels (figure size from H, W). The ground-truth masks (N, H, W) are
    outlined at 0.5 where given, else the fault rows (N,) int (-1 unknown) are marked.

    Images share one colour scale (raw values, never clipped: cold and warm stay comparable) and so do the
    maps; one colour bar each. Axes: 2 N panels + 2 colour bars."""
    images, maps, masks, fault_rows = _map_inputs(images, maps, titles, masks, fault_rows)
    (n_images, height, width), ncols = images.shape, min(ncols, len(images))
    n_rows, inches = math.ceil(n_images / ncols), PANEL_INCHES / max(height, width)
    suptitle_lines = sum(1 for part in (title, caption) if part)
    fig = _figure(
        2 * ncols * (width * inches + 0.15) + 1.8,
        n_rows * (height * inches + 0.35) + 0.2 + 0.3 * suptitle_lines,
        caption,
        title,
    )
    axes = fig.subplots(n_rows, 2 * ncols, squeeze=False).reshape(-1, 2)
    ranges = [{"vmin": values.min(), "vmax": values.max()} for values in (images, maps)]
    for i, name in enumerate(titles):
        mask = None if masks is None else masks[i]
        row = None if fault_rows is None else int(fault_rows[i])
        shown = _draw_pair(axes[i], images[i], maps[i], mask, row, *ranges)
        axes[i, 0].set_title(name, fontsize="small", loc="left")
        axes[i, 1].set_title("anomaly map", fontsize="small", loc="left")
    for ax in axes[n_images:].ravel():
        fig.delaxes(ax)
    panels = list(axes[:n_images].ravel())
    fig.colorbar(shown[0], ax=panels, label="raw value (images)", shrink=0.9)
    opaque = ScalarMappable(norm=shown[1].norm, cmap=shown[1].get_cmap())
    fig.colorbar(opaque, ax=panels, label="anomaly map", shrink=0.9)
    return fig
