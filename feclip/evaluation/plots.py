"""Figures of HDMAP runs: ROC curves (all, cold, warm, cross) with the deployable operating points, score
histograms with the thresholds, the stratified anomaly-map panel, and a sweep's variant x domain intervals.

Every function returns a `matplotlib.figure.Figure` built without pyplot (no global figure state, Agg canvas)
and saves nothing; the caller saves (`fig.savefig(path)`). Every function takes `title` (e.g. "C · fft ·
random-init") and `caption` (e.g. "random-init backbone: numbers test the pipeline, not FE-CLIP"), shown
together as the suptitle. Legends sit outside the axes, never over the data. Inputs may be numpy arrays or
torch tensors (any device).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from feclip.errors import FeclipError
from feclip.evaluation.metrics import roc_curve

PANEL_INCHES = 3.3  # the width of one 31 x 95 map panel: 3.8 screen pixels per map pixel at 110 dpi
RAW_PERCENTILES = (1.0, 99.0)  # the grey scale of each raw image: its own percentiles (low-contrast HDMAP)
RAW_CMAP, MAP_CMAP = "gray", "magma"  # maps: perceptually uniform, one scale for the whole figure
FAULT_ROW_COLOUR = "tab:red"
GROUP_STYLE = {  # (condition, label) -> (legend name, colour, line style)
    ("cold", 0): ("cold good", "tab:blue", "-"),
    ("warm", 0): ("warm good", "tab:cyan", "--"),
    ("cold", 1): ("cold fault", "tab:red", "-"),
    ("warm", 1): ("warm fault", "tab:orange", "--"),
}


class PlotError(FeclipError):
    """Inputs of a figure are inconsistent; the message names the argument and the expected shape."""


def as_numpy(values) -> np.ndarray:
    """`values` as a numpy array (a torch tensor, on any device, as float32)."""
    if hasattr(values, "detach"):
        values = values.detach().float().cpu().numpy()
    return np.asarray(values)


def _score_inputs(scores, labels, condition) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scores (N,) float, labels (N,) int {0, 1}, condition (N,) str; one-line error on mismatch."""
    scores, labels, condition = (
        as_numpy(scores).astype(float),
        as_numpy(labels).astype(int),
        as_numpy(condition),
    )
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


def roc_curves(
    scores,
    labels,
    condition,
    caption: str = "",
    title: str = "",
    operating_points: Mapping[str, tuple[float, float]] | None = None,
    operating_label: str = "",
) -> Figure:
    """ROC of all test images, cold (fault vs good), warm and cross (cold fault vs warm good), AUROC and n in
    the legend (right of the axes), + the unlabelled chance line.

    scores (N,), labels (N,) 0 good / 1 fault, condition (N,) 'cold' | 'warm'. A subset without both classes
    is left out and named in the axes title. operating_points: {subset: (false-alarm rate, detection rate)}
    at one threshold (e.g. thr_fa1), a ring on that subset's curve, named `operating_label` in the legend."""
    scores, labels, condition = _score_inputs(scores, labels, condition)
    fig = _figure(6.9, 4.5, caption, title)
    ax = fig.add_subplot()
    missing, colours = [], {}
    for name, rows in roc_subsets(labels, condition).items():
        fpr, tpr, auroc = roc_curve(scores[rows], labels[rows])
        if math.isnan(auroc):
            missing.append(name)
            continue
        (line,) = ax.plot(fpr, tpr, label=f"{name} (AUROC {100 * auroc:.1f}, n={rows.sum()})")
        colours[name] = line.get_color()
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="_chance")
    ring = {"marker": "o", "markersize": 9, "markerfacecolor": "none", "markeredgewidth": 2, "linestyle": ""}
    points = [
        (name, point)
        for name, point in (operating_points or {}).items()
        if name in colours and np.isfinite(point).all()
    ]
    for name, (fpr, tpr) in points:
        ax.plot(fpr, tpr, color=colours[name], clip_on=False, label="_point", **ring)
    if points and operating_label:
        ax.plot([], [], color="black", label=operating_label, **ring)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.set_aspect("equal")
    ax.set_title("ROC" + (f" (no curve for {', '.join(missing)}: one class only)" if missing else ""))
    if colours:
        fig.legend(loc="outside right center", fontsize="small")
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
    (e.g. {"fa1 (deployable)": 0.58, "val": 0.61}), the legend right of the axes. scores (N,), labels (N,),
    condition (N,) as in `roc_curves`."""
    scores, labels, condition = _score_inputs(scores, labels, condition)
    fig = _figure(8.5, 4, caption, title)
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
    styles = ("-", "--", ":", "-.")  # thresholds that coincide stay visible
    for index, (name, value) in enumerate((thresholds or {}).items()):
        style = styles[index % len(styles)]
        ax.axvline(
            value,
            color=f"C{index + 4}",
            linestyle=style,
            linewidth=1.5,
            label=f"threshold {name} = {value:.4g}",
        )
    ax.set(xlabel="anomaly score", ylabel="images", title="Score distribution by condition and label")
    fig.legend(loc="outside right center", fontsize="small")
    return fig


# ------------------------------------------------------------------------------------------ map panel


@dataclass(frozen=True)
class MapExample:
    """One image of the map panel at (`column`, `row`): raw `image` (H, W) over its anomaly `amap` (h, w;
    drawn on the image's pixel grid), `title` (the decision, in `colour`) and the `fault_rows` (rows of the
    ground-truth mask, marked by ticks beside both panels)."""

    image: np.ndarray
    amap: np.ndarray
    column: int
    row: int
    title: str
    colour: str = "black"
    fault_rows: tuple[int, ...] = ()


def mask_rows(mask) -> tuple[int, ...]:
    """The rows of a mask (H, W) with any fault pixel, ascending."""
    return tuple(int(r) for r in np.flatnonzero(np.asarray(as_numpy(mask)).any(axis=1)))


def raw_range(image: np.ndarray) -> tuple[float, float]:
    """The grey scale of one raw image (H, W): its `RAW_PERCENTILES` (HDMAP is low-contrast; values outside
    show as black / white, and the panel says the scale and the full range)."""
    low, high = np.percentile(image, RAW_PERCENTILES)
    return float(low), float(high)


def map_range(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """One colour scale for every anomaly map of a figure: their joint minimum and maximum (none clipped)."""
    low = min(float(np.min(m)) for m in maps)
    high = max(float(np.max(m)) for m in maps)
    return (low, high) if high > low else (low - 0.5, low + 0.5)


def _row_label(rows: tuple[int, ...]) -> str:
    """'5', '4–6' (a band) or '4, 9'."""
    if len(rows) > 1 and rows[-1] - rows[0] == len(rows) - 1:
        return f"{rows[0]}–{rows[-1]}"
    return ", ".join(map(str, rows))


def _mark_rows(ax, rows: tuple[int, ...]) -> None:
    """Ticks beside the image (left and right, outside) at the fault `rows`; the image itself stays clear. A
    panel without fault rows gets one invisible tick, so that every panel keeps the same size."""
    ax.set_yticks(rows or (0,), labels=[""] * max(len(rows), 1))
    colour = FAULT_ROW_COLOUR if rows else "none"
    ax.tick_params(axis="y", length=6, width=1.5, color=colour, left=True, right=True)


def _draw_example(raw_ax, map_ax, example: MapExample, norm: Normalize) -> None:
    """Raw image (grey, its own percentile scale) above its anomaly map (shared `norm`), square pixels,
    nearest upscaling, fault rows ticked beside both."""
    image, amap = as_numpy(example.image).astype(float), as_numpy(example.amap).astype(float)
    height, width = image.shape
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    low, high = raw_range(image)
    raw_ax.imshow(image, cmap=RAW_CMAP, vmin=low, vmax=high, interpolation="nearest", aspect="equal")
    map_ax.imshow(amap, cmap=MAP_CMAP, norm=norm, interpolation="nearest", aspect="equal", extent=extent)
    raw_ax.set_title(example.title, fontsize="small", loc="left", color=example.colour)
    p_low, p_high = (f"{p:g}" for p in RAW_PERCENTILES)
    raw_ax.set_xlabel(
        f"raw: grey = p{p_low}–p{p_high} {low:.2g}–{high:.2g} (range {image.min():.2g}–{image.max():.2g})",
        fontsize="x-small",
        loc="left",
    )
    fault = f"; fault rows {_row_label(example.fault_rows)} (red ticks)" if example.fault_rows else ""
    map_ax.set_xlabel(f"map: {amap.min():.3g}–{amap.max():.3g}{fault}", fontsize="x-small", loc="left")
    for ax in (raw_ax, map_ax):
        ax.set(xlim=extent[:2], ylim=extent[2:], xticks=[])
        _mark_rows(ax, example.fault_rows)


def map_panel(
    examples: Sequence[MapExample],
    columns: Sequence[str],
    n_rows: int,
    caption: str = "",
    title: str = "",
    note: str = "",
    map_label: str = "anomaly map",
) -> Figure:
    """The stratified map panel: one column per stratum (`columns`: their headers), `n_rows` examples each, an
    example = its raw image above its anomaly map. Raw images: each on its own percentile grey scale (said
    under it); maps: one perceptual colour scale for the whole figure (one colour bar, nothing clipped);
    square pixels, nearest upscaling; fault rows ticked beside the images. An empty slot says so. `note`: one
    line under the panel (how the examples were picked). Axes: 2 per slot + the colour bar."""
    if not examples:
        raise PlotError("map_panel got no examples; expected at least one image")
    if any(not (0 <= e.column < len(columns) and 0 <= e.row < n_rows) for e in examples):
        raise PlotError(f"an example lies outside the {len(columns)} columns x {n_rows} rows of the panel")
    if len({(e.column, e.row) for e in examples}) < len(examples):
        raise PlotError("two examples share one (column, row) slot of the map panel; expected one each")
    shapes = {(as_numpy(e.image).ndim, as_numpy(e.amap).ndim) for e in examples}
    if shapes != {(2, 2)}:
        raise PlotError("map_panel examples need image (H, W) and amap (h, w); got other dimensions")
    height, width = as_numpy(examples[0].image).shape
    panel_height = PANEL_INCHES * height / width
    lines = sum(1 for part in (title, caption) if part) + bool(note)
    fig = _figure(
        len(columns) * (PANEL_INCHES + 0.45) + 1.0,
        n_rows * (2 * panel_height + 0.95) + 0.45 + 0.25 * lines,
        caption,
        title,
    )
    figures = fig.subfigures(1, len(columns) + 1, width_ratios=[PANEL_INCHES + 0.45] * len(columns) + [1.0])
    norm = Normalize(*map_range([as_numpy(e.amap) for e in examples]))
    slots = {}
    for column, (header, sub) in enumerate(zip(columns, figures[:-1], strict=True)):
        sub.suptitle(header, fontsize="medium")
        axes = sub.subplots(2 * n_rows, 1, squeeze=False)[:, 0]
        for row in range(n_rows):
            slots[column, row] = axes[2 * row], axes[2 * row + 1]
    for example in examples:
        _draw_example(*slots.pop((example.column, example.row)), example, norm)
    for raw_ax, map_ax in slots.values():
        raw_ax.set_axis_off()
        map_ax.set_axis_off()
        raw_ax.text(0.5, 0.0, "no image", ha="center", va="center", transform=raw_ax.transAxes, color="grey")
    bar = figures[-1]
    cax = bar.add_axes((0.15, 0.1, 0.22, 0.8))
    bar.colorbar(
        ScalarMappable(norm=norm, cmap=MAP_CMAP), cax=cax, label=f"{map_label} (one scale, every map)"
    )
    if note:
        fig.supxlabel(note, fontsize="small")
    return fig


# ------------------------------------------------------------------------------------------ a sweep


def variant_intervals(
    numbers: Mapping[str, pd.DataFrame],
    domains: Sequence[str],
    caption: str = "",
    title: str = "",
) -> Figure:
    """A sweep's variants side by side: one panel per metric (rows, the `numbers` keys, e.g. "auroc (x100)")
    and domain (columns); in each panel every variant (y, the same order in every panel) at its mean (dot)
    with its 95 % interval (bar; a ring where the runs logged none). numbers: {metric: frame with columns
    variant, domain, mean, lo, hi} (`report.cell_numbers`). Each panel has its own x range: variants are
    compared within a domain. Variants that read the test labels (`NOT DEPLOYABLE` in their label) are named
    in red."""
    if not numbers or not domains:
        raise PlotError("variant_intervals got no metrics or no domains; expected report.cell_numbers frames")
    missing = {
        name: {"variant", "domain", "mean", "lo", "hi"} - set(frame.columns)
        for name, frame in numbers.items()
    }
    if any(missing.values()):
        raise PlotError(
            f"variant_intervals: numbers lack columns {missing}; expected report.cell_numbers frames"
        )
    variants = sorted({v for frame in numbers.values() for v in frame["variant"]})
    position = {variant: index for index, variant in enumerate(variants)}
    fig = _figure(
        2.2 * len(domains) + 0.12 * max(map(len, variants)) + 0.5,
        len(numbers) * (0.3 * len(variants) + 0.9) + 0.6,
        caption,
        title,
    )
    axes = fig.subplots(len(numbers), len(domains), squeeze=False, sharey=True)
    for row, (metric, frame) in enumerate(numbers.items()):
        for column, domain in enumerate(domains):
            ax = axes[row, column]
            cells = frame[frame["domain"] == domain]
            for cell in cells.itertuples():
                y, interval = position[cell.variant], (cell.lo, cell.hi)
                if all(np.isfinite(interval)):
                    ax.errorbar(
                        cell.mean,
                        y,
                        xerr=[[cell.mean - cell.lo], [cell.hi - cell.mean]],
                        fmt="o",
                        color="tab:blue",
                        capsize=3,
                        markersize=5,
                    )
                else:
                    ax.plot(cell.mean, y, "o", color="tab:blue", markerfacecolor="none", markersize=6)
            if cells.empty:
                ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes, color="grey")
                ax.set_xticks([])
            ax.set_title(f"{metric} · {domain}", fontsize="small")
            ax.grid(axis="x", alpha=0.3)
    axes[0, 0].set_yticks(range(len(variants)), labels=variants)
    axes[0, 0].set_ylim(len(variants) - 0.5, -0.5)
    for ax in axes[:, 0]:
        for label in ax.get_yticklabels():
            label.set(fontsize="small", color="tab:red" if "NOT DEPLOYABLE" in label.get_text() else "black")
    fig.supxlabel("dot: mean over the runs; bar: 95 % interval; ring: no interval logged", fontsize="small")
    return fig
