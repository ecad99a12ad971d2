"""Inference over an image set and the HDMAP evaluation of a scored set.

`predict` runs a method in batches (frozen features reused when given), applies the optional reference
scoring (few-shot / condition-aware banks), and keeps per image the score, the map statistics and the anomaly
map at the native image size. `evaluate_hdmap` turns a scored test set (`HDMAPData.with_predictions`) and
the validation scores into the named HDMAP protocol metrics; `scores_table` is its per-image table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from feclip.data.hdmap import HDMAPData
from feclip.data.sets import ImageSet
from feclip.errors import FeclipError
from feclip.evaluation.metrics import hdmap_metrics, pixel_auroc
from feclip.methods.base import Method, MethodOutput
from feclip.progress import progress
from feclip.runtime import Runtime

# (out, index) -> (score (B,), map (B, h, w), extra per-image columns): reference banks and gates hook in here
Rescorer = Callable[[MethodOutput, torch.Tensor], tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]]
TABLE_COLUMNS = ("path", "domain", "split", "file_index", "condition", "label")


class InferenceError(FeclipError):
    """A method produced no scores (it scores only against reference banks and none were built)."""


@dataclass
class Predictions:
    scores: np.ndarray  # (N,) image anomaly scores
    map_max: np.ndarray  # (N,) max of the anomaly map
    map_topk: np.ndarray  # (N,) mean of the top-k map values
    maps: torch.Tensor  # (N, H, W) float32 anomaly maps resized to `map_size` (native image size for HDMAP)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. gate decisions per image

    def columns(self) -> dict[str, np.ndarray]:
        """Per-image columns: score, map_max, map_topk and the extra columns (for the scored set's meta)."""
        return {"score": self.scores, "map_max": self.map_max, "map_topk": self.map_topk, **self.extra}


def _scored(method: Method, out: MethodOutput, index, rescore: Rescorer | None):
    if rescore is not None:
        return rescore(out, index)
    if out.score is None:
        raise InferenceError(f"method {method.name} scores only against reference banks; set fewshot.k > 0")
    return out.score.float(), out.map.float(), {}


@torch.inference_mode()
def predict(
    method: Method,
    images: ImageSet,
    rt: Runtime,
    *,
    map_size: tuple[int, int],
    frozen: torch.Tensor | None = None,
    rescore: Rescorer | None = None,
    topk: int = 10,
) -> Predictions:
    """Score every image of `images`; frozen: their cached frozen features (`Frozen`) or None."""
    method.model.eval()
    parts: dict[str, list] = {"scores": [], "map_max": [], "map_topk": [], "maps": []}
    extras: dict[str, list] = {}
    for index in progress(torch.arange(len(images)).split(rt.batch_size), "predict", leave=False):
        with rt.policy():
            if frozen is None:
                out = method.forward(images.inputs(index, rt.device))
            else:
                out = method.forward(frozen=frozen[index].to(rt.device))
        score, amap, extra = _scored(method, out, index, rescore)
        for name, values in extra.items():
            extras.setdefault(name, []).append(values)
        flat = amap.flatten(1)
        parts["scores"].append(score.cpu())
        parts["map_max"].append(flat.amax(1).cpu())
        parts["map_topk"].append(flat.topk(min(topk, flat.shape[1]), dim=1).values.mean(1).cpu())
        parts["maps"].append(F.interpolate(amap[:, None], size=map_size, mode="bilinear")[:, 0].cpu())
    return Predictions(
        scores=torch.cat(parts["scores"]).numpy(),
        map_max=torch.cat(parts["map_max"]).numpy(),
        map_topk=torch.cat(parts["map_topk"]).numpy(),
        maps=torch.cat(parts["maps"]),
        extra={name: np.concatenate(values) for name, values in extras.items()},
    )


def evaluate_hdmap(
    scored: HDMAPData, val_scores: np.ndarray | None, val_percentile: float
) -> dict[str, float]:
    """HDMAP protocol metrics (docs/data.md §8) of a scored test set (meta has `score`);
    with pixel masks (synthetic data) also `pixel_auroc` on the native-size maps."""
    meta = scored.meta
    metrics = hdmap_metrics(
        meta["score"].to_numpy(),
        meta["label"].to_numpy(),
        meta["condition"].to_numpy(),
        val_scores,
        val_percentile,
    )
    if scored.masks is not None:
        metrics["pixel_auroc"] = pixel_auroc(scored.maps.float().numpy(), scored.masks.numpy())
    return metrics


def scores_table(scored: HDMAPData, columns: list[str]) -> pd.DataFrame:
    """Per-image results: path, domain, file index, condition, label, then the prediction `columns`."""
    return scored.meta[[c for c in (*TABLE_COLUMNS, *columns) if c in scored.meta]].reset_index(drop=True)
