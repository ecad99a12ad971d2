"""The figures of one HDMAP job, written as PNGs: ROC curves, score histograms, the anomaly-map grid (worst
misses first) and the loss curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from feclip.data.hdmap import HDMAPData
from feclip.evaluation import plots


def worst_misses(scores: np.ndarray, labels: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Indices by how wrong they are at `threshold`: missed faults and false alarms, largest margin first."""
    margin = np.where(labels == 1, threshold - scores, scores - threshold)
    return np.argsort(-margin, kind="stable")[:n]


def write_figures(
    directory: Path, scored: HDMAPData, metrics: dict, history: dict, *, caption: str, n_examples: int
) -> None:
    """scored: the scored test set (meta with `score`, maps); caption: e.g. the random-init note."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = scored.meta
    scores, labels, condition = (meta[c].to_numpy() for c in ("score", "label", "condition"))
    thresholds = {
        name: metrics[f"thr_{name}"]
        for name in ("oracle", "val")
        if np.isfinite(metrics.get(f"thr_{name}", np.nan))
    }
    figures = {
        "roc.png": plots.roc_curves(scores, labels, condition, caption=caption),
        "score_histograms.png": plots.score_histograms(
            scores, labels, condition, thresholds, caption=caption
        ),
    }
    worst = worst_misses(scores, labels, metrics.get("thr_oracle", np.median(scores)), n_examples)
    names = (
        meta["condition"]
        + " "
        + np.where(labels == 1, "fault", "good")
        + " #"
        + meta["file_index"].astype(str)
    )
    titles = [f"{names[i]} s={scores[i]:.3f}" for i in worst]
    figures["anomaly_maps.png"] = plots.anomaly_map_grid(
        scored.images[worst], scored.maps[worst].float(), titles, caption=caption
    )
    if history:
        figures["loss.png"] = plots.loss_curves(history, caption=caption)
    for name, figure in figures.items():
        figure.savefig(directory / name, dpi=110)
