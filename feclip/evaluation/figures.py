"""The figures of one HDMAP job, written as PNGs: ROC curves (all, cold, warm, cross), score histograms and
the anomaly-map grid (worst misses first, masks or fault rows outlined). Training losses are not drawn: the
tracker's charts show them per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feclip.data.hdmap import HDMAPData
from feclip.evaluation import plots


def worst_misses(scores: np.ndarray, labels: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Indices by how wrong they are at `threshold`: missed faults and false alarms, largest margin first."""
    margin = np.where(labels == 1, threshold - scores, scores - threshold)
    return np.argsort(-margin, kind="stable")[:n]


def _map_figure(scored: HDMAPData, metrics: dict, n_examples: int, **text):
    """The anomaly-map grid of the `n_examples` worst misses at thr_oracle (the median score without it)."""
    meta = scored.meta
    scores, labels = meta["score"].to_numpy(), meta["label"].to_numpy()
    worst = worst_misses(scores, labels, metrics.get("thr_oracle", np.median(scores)), n_examples)
    kinds = np.where(labels == 1, "fault", "good")
    conditions, indices = meta["condition"].to_numpy(), meta["file_index"].to_numpy()
    titles = [f"{conditions[i]} {kinds[i]} #{indices[i]} s={scores[i]:.3f}" for i in worst]
    masks = None if scored.masks is None else scored.masks[worst]
    rows = meta["fault_row"].to_numpy()[worst] if "fault_row" in meta else None
    return plots.anomaly_map_grid(
        scored.images[worst], scored.maps[worst].float(), titles, masks=masks, fault_rows=rows, **text
    )


def write_figures(
    directory: Path, scored: HDMAPData, metrics: dict, *, caption: str, n_examples: int, title: str = ""
) -> list[Path]:
    """Write roc.png, score_histograms.png and anomaly_maps.png under `directory`; returns their paths.

    scored: the scored test set (meta with `score`, `label`, `condition`, `file_index`, optional `fault_row`;
    maps (N, H, W); masks (N, H, W) when known); title: e.g. "C · fft · random-init"; caption: e.g. the
    random-init note."""
    directory.mkdir(parents=True, exist_ok=True)
    meta, text = scored.meta, {"caption": caption, "title": title}
    scores, labels, condition = (meta[c].to_numpy() for c in ("score", "label", "condition"))
    thresholds = {
        name: metrics[f"thr_{name}"]
        for name in ("oracle", "val")
        if np.isfinite(metrics.get(f"thr_{name}", np.nan))
    }
    figures = {
        "roc.png": plots.roc_curves(scores, labels, condition, **text),
        "score_histograms.png": plots.score_histograms(scores, labels, condition, thresholds, **text),
        "anomaly_maps.png": _map_figure(scored, metrics, n_examples, **text),
    }
    for name, figure in figures.items():
        figure.savefig(directory / name, dpi=110)
    return [directory / name for name in figures]
