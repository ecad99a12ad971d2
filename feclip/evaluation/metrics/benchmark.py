"""The paper's benchmark metrics: per category, then the macro mean over categories (never pooled)."""

from __future__ import annotations

import numpy as np

from feclip.evaluation.metrics.checks import MetricsError, label_array, maps_and_masks, score_array
from feclip.evaluation.metrics.image import ranking_metrics
from feclip.evaluation.metrics.pixel import PRO_LEVELS, pixel_subset_auroc, pro_subset

BENCHMARK_METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pro")


def benchmark_metrics(
    image_scores, labels, maps, masks, categories, max_fpr: float = 0.3
) -> dict[str, float]:
    """Per-category metrics and their macro means (the paper's protocol: mean over categories, never pooled).

    image_scores: (N,); labels: (N,) 0/1; maps, masks: (N, H, W); categories: (N,) names.
    Keys: "<category>/image_auroc", "/image_ap", "/pixel_auroc", "/pro" for every category, and image_auroc,
    image_ap, pixel_auroc, pro = the plain mean over categories (NaN if any category's value is NaN).
    """
    scores = score_array(image_scores, "image_scores")
    fault = label_array(labels, "labels", scores.size)
    maps, positive = maps_and_masks(maps, masks)
    names = np.asarray(categories).astype(str)
    if len(maps) != scores.size or names.shape != (scores.size,):
        raise MetricsError(
            f"maps/categories: expected {scores.size} of each (one per image score), "
            f"got {len(maps)} maps and categories of shape {names.shape}"
        )
    metrics: dict[str, float] = {}
    for category in sorted(set(names.tolist())):
        rows = names == category
        ranking = ranking_metrics(category, scores[rows], fault[rows])
        metrics[f"{category}/image_auroc"] = ranking["auroc"]
        metrics[f"{category}/image_ap"] = ranking["ap"]
        metrics[f"{category}/pixel_auroc"] = pixel_subset_auroc(category, maps[rows], positive[rows])
        metrics[f"{category}/pro"] = pro_subset(category, maps[rows], positive[rows], max_fpr, PRO_LEVELS)
    for name in BENCHMARK_METRICS:
        metrics[name] = float(np.mean([value for key, value in metrics.items() if key.endswith(f"/{name}")]))
    return metrics
