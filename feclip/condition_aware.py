"""Condition-aware FE-CLIP scoring: few-shot reference banks chosen per image by a cold/warm gate.

Wires `feclip.fewshot` (reference selection, banks, horizontal context) and `feclip.gating` (gates) into the
evaluator: `build` selects the references (from the fit normals or the test extremes), computes their fused
patch features once, fits the gate on them, and returns a `ReferenceScorer` that `evaluate.predict` calls per
batch. References taken from the test split are excluded from scoring (`keep`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from feclip.data.hdmap import HDMAPData
from feclip.data.sets import ImageSet
from feclip.fewshot import ReferenceBank, combine, gated_distance, select_references
from feclip.gating import make_gate
from feclip.metrics import gate_accuracy
from feclip.model.feclip import FEClip, FEClipOutput


@dataclass
class ReferenceScorer:
    bank: ReferenceBank
    gate: object  # a fitted feclip.gating gate
    raw: torch.Tensor  # (N, H, W) raw native images of the set being scored (the p90 gate reads them)
    meta: pd.DataFrame  # (N rows) metadata of that set (the oracle gate reads it)
    weight_map: float
    weight_score: float

    def __call__(self, out: FEClipOutput, index: torch.Tensor):
        """(score (B,), map (B, h, w), per-image gate columns) for rows `index` of the scored set."""
        raw = self.raw[index].to(out.score.device)
        decision = self.gate.decide(raw, out.cls_embedding.float(), self.meta.iloc[index.numpy()])
        distance = gated_distance(self.bank, out.patch_features, decision)
        score, amap = combine(
            out.map.float(), out.score.float(), distance, self.weight_map, self.weight_score
        )
        return score, amap, decision.columns()

    def for_images(self, raw: torch.Tensor, meta: pd.DataFrame) -> ReferenceScorer:
        """The same banks and gate applied to another set (e.g. the validation normals).

        Validation normals carry no condition, so an oracle gate falls back to the mixed bank there.
        """
        gate = make_gate("none") if self.gate.state()["name"] == "oracle" else self.gate
        return replace(self, raw=raw, meta=meta, gate=gate)


@dataclass
class References:
    scorer: ReferenceScorer
    keep: np.ndarray  # (N_test,) bool: test rows to score (False for references taken from the test split)
    state: dict  # json-able: selection and fitted gate parameters, saved with the run

    def metrics(self, columns: dict[str, np.ndarray], meta: pd.DataFrame) -> dict[str, float]:
        """gate_acc overall and per group against the file-index truth (gated runs only)."""
        if self.state["gate"]["name"] == "none":
            return {"n_references_excluded": float(self.state["n_excluded"])}
        accuracy = gate_accuracy(columns["gate"], meta["condition"].to_numpy(), meta["label"].to_numpy())
        return {**accuracy, "n_references_excluded": float(self.state["n_excluded"])}


@torch.inference_mode()
def reference_features(model: FEClip, images: ImageSet, device, autocast, batch_size: int):
    """(fused patch features per tap, each (R, gh, gw, D); cls embeddings (R, E)) of the reference images."""
    features, embeddings = [], []
    for index in torch.arange(len(images)).split(batch_size):
        with autocast:
            out = model(images.inputs(index, device))
        features.append([f.float() for f in out.patch_features])
        embeddings.append(out.cls_embedding.float())
    return [torch.cat(taps) for taps in zip(*features, strict=True)], torch.cat(embeddings)


def build(cfg: DictConfig, model: FEClip, fit: HDMAPData, test: HDMAPData, to_input, rt) -> References | None:
    """References and gate from `cfg.fewshot` / `cfg.gating`, or None when fewshot.k == 0."""
    if cfg.fewshot.k == 0:
        return None
    pool_meta = pd.concat([fit.meta, test.meta], ignore_index=True)
    pool_raw = torch.cat([fit.images, test.images])
    selection = select_references(
        pool_meta, cfg.fewshot.source, cfg.fewshot.k, cfg.seed, gated=cfg.gating.name != "none"
    )
    rows = torch.from_numpy(selection.positions)
    refs = ImageSet(
        pool_raw[rows],
        torch.zeros(len(rows), dtype=torch.int64),
        None,
        torch.zeros(len(rows), dtype=torch.bool),
        to_input,
    )
    features, embeddings = reference_features(model, refs, rt.device, rt.autocast, cfg.eval.batch_size)
    bank = ReferenceBank(
        selection.split(features),
        cfg.fewshot.context,
        cfg.fewshot.context_k,
        tuple(cfg.fewshot.context_ks),
        cfg.fewshot.chunk_size,
    )
    gate_params = {k: v for k, v in OmegaConf.to_container(cfg.gating).items()}
    gate = make_gate(**gate_params).fit(pool_raw[rows].to(rt.device), embeddings, selection.condition)
    scorer = ReferenceScorer(
        bank, gate, test.images, test.meta, cfg.fewshot.weight_map, cfg.fewshot.weight_score
    )
    state = {
        "source": cfg.fewshot.source,
        "k": cfg.fewshot.k,
        "n_excluded": selection.n_excluded,
        "reference_paths": pool_meta["path"].iloc[selection.positions].tolist(),
        "gate": gate.state(),
    }
    return References(scorer, selection.keep[len(fit) :], state)
