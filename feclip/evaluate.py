"""Inference over an image set and the HDMAP evaluation of its scores.

`predict` runs the model in batches (frozen tokens reused when given), applies the optional few-shot reference
scoring, and keeps per image the score, the map statistics and the anomaly map at the native image size.
`evaluate_hdmap` turns test and validation predictions into the named HDMAP protocol metrics.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm import tqdm

from feclip.data.sets import ImageSet
from feclip.metrics import hdmap_metrics, pixel_auroc
from feclip.model.feclip import FEClip, FEClipOutput

# (out, index) -> (score (B,), map (B, h, w), extra per-image columns): few-shot banks and gates hook in here
Rescorer = Callable[[FEClipOutput, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]]


@dataclass
class Predictions:
    scores: np.ndarray  # (N,) image anomaly scores
    map_max: np.ndarray  # (N,) max of the anomaly map
    map_topk: np.ndarray  # (N,) mean of the top-k map values
    maps: torch.Tensor  # (N, H, W) float16 anomaly maps resized to `map_size` (native image size for HDMAP)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. gate decisions per image

    def subset(self, rows: np.ndarray) -> Predictions:
        """The predictions of the images where `rows` (N,) bool is True."""
        maps = self.maps[torch.from_numpy(rows)]
        extra = {name: values[rows] for name, values in self.extra.items()}
        return Predictions(self.scores[rows], self.map_max[rows], self.map_topk[rows], maps, extra)


@torch.inference_mode()
def predict(
    model: FEClip,
    images: ImageSet,
    batch_size: int,
    device: torch.device,
    autocast: AbstractContextManager,
    map_size: tuple[int, int],
    tokens: torch.Tensor | None = None,
    rescore: Rescorer | None = None,
    topk: int = 10,
) -> Predictions:
    """Score every image of `images`; tokens: (N, T, D) cached pre-tap tokens or None (full forward)."""
    model.eval()
    image_size = tuple(images.inputs(torch.arange(1), device).shape[-2:])
    parts: dict[str, list] = {"scores": [], "map_max": [], "map_topk": [], "maps": []}
    extras: dict[str, list] = {}
    for index in tqdm(torch.arange(len(images)).split(batch_size), desc="predict", leave=False):
        with autocast:
            if tokens is None:
                out = model(images.inputs(index, device))
            else:
                out = model.forward_from_tokens(tokens[index].to(device), image_size)
        score, amap = out.score.float(), out.map.float()
        if rescore is not None:
            score, amap, extra = rescore(out, index)
            for name, values in extra.items():
                extras.setdefault(name, []).append(values)
        flat = amap.flatten(1)
        parts["scores"].append(score.cpu())
        parts["map_max"].append(flat.amax(1).cpu())
        parts["map_topk"].append(flat.topk(min(topk, flat.shape[1]), dim=1).values.mean(1).cpu())
        parts["maps"].append(F.interpolate(amap[:, None], size=map_size, mode="bilinear")[:, 0].half().cpu())
    return Predictions(
        scores=torch.cat(parts["scores"]).numpy(),
        map_max=torch.cat(parts["map_max"]).numpy(),
        map_topk=torch.cat(parts["map_topk"]).numpy(),
        maps=torch.cat(parts["maps"]),
        extra={name: np.concatenate(values) for name, values in extras.items()},
    )


def evaluate_hdmap(
    test: Predictions,
    meta: pd.DataFrame,
    val_scores: np.ndarray | None,
    val_percentile: float,
    masks: torch.Tensor | None = None,
) -> dict[str, float]:
    """HDMAP protocol metrics (../shared/docs/architecture.md) of test predictions described by `meta`.

    masks: (N, H, W) pixel masks of the test images (synthetic data) -> `pixel_auroc` on native-size maps.
    """
    metrics = hdmap_metrics(
        test.scores, meta["label"].to_numpy(), meta["condition"].to_numpy(), val_scores, val_percentile
    )
    if masks is not None:
        metrics["pixel_auroc"] = pixel_auroc(test.maps.float().numpy(), masks.numpy())
    return metrics


def scores_table(test: Predictions, meta: pd.DataFrame) -> pd.DataFrame:
    """Per-image results: path, domain, file index, condition, label, score, map statistics, gate columns."""
    columns = [c for c in ("path", "domain", "split", "file_index", "condition", "label") if c in meta]
    table = meta[columns].reset_index(drop=True).copy()
    table["score"] = test.scores
    table["map_max"] = test.map_max
    table["map_topk"] = test.map_topk
    for name, values in test.extra.items():
        table[name] = values
    return table
