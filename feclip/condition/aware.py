"""Condition-aware scoring: reference banks chosen per image by a cold/warm gate, for any method.

`build` selects the references (from the fit normals or the test extremes), runs the method on them once
(their `MethodOutput.features` fill the banks, their embeddings feed the clip_sim gate), fits the gate on
them, and returns a `ReferenceScorer` that `feclip.evaluation.inference.predict` calls per batch. References
taken from the test split are excluded from scoring (`keep`).

Validation normals (train/good, no condition label) are scored through the same deployable path as test
images: the fitted gate routes them. A gate that reads the truth (`needs_labels`, the oracle) cannot route
unlabelled images, so for them it is replaced by its deployable stand-in, the p90 gate fitted on the same
labelled references (`deployable_gate`); predict mode uses the same stand-in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from feclip.condition.banks import ReferenceBank, gated_terms, select_references
from feclip.condition.gates import make_gate
from feclip.data.hdmap import HDMAPData
from feclip.data.sets import ImageSet
from feclip.evaluation.metrics import gate_accuracy
from feclip.methods.base import Method, MethodOutput
from feclip.runtime import Runtime

STAND_IN_GATE = "p90"  # routes unlabelled images for gates that need labels (the oracle)


@dataclass
class ReferenceScorer:
    method: Method
    bank: ReferenceBank
    gate: object  # a fitted feclip.condition.gates gate
    raw: torch.Tensor | None  # (N, H, W) raw native images of the set being scored (the p90 gate reads them)
    meta: pd.DataFrame | None  # (N rows) metadata of that set (the oracle gate reads it)

    def __call__(self, out: MethodOutput, index: torch.Tensor):
        """(score (B,), map (B, h, w), per-image gate columns) for rows `index` of the scored set."""
        return self.score_batch(out, self.raw[index], self.meta.iloc[index.numpy()])

    def score_batch(self, out: MethodOutput, raw: torch.Tensor, meta: pd.DataFrame | None):
        """(score (B,), map (B, h, w), gate columns) of a batch: raw (B, H, W) native images, meta or None."""
        raw = raw.to(out.features[0].device)
        embedding = None if out.embedding is None else out.embedding.float()
        decision = self.gate.decide(raw, embedding, meta)

        def terms(bank_name: str, rows: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.method.reference_terms(out, self.bank, bank_name, rows)

        score, amap = self.method.with_references(out, gated_terms(decision, terms, len(raw)))
        return score, amap, decision.columns()

    def for_images(self, raw: torch.Tensor, meta: pd.DataFrame, gate) -> ReferenceScorer:
        """The same banks applied to another set (e.g. the validation normals) through `gate`."""
        return replace(self, raw=raw, meta=meta, gate=gate)


@dataclass
class References:
    scorer: ReferenceScorer
    keep: np.ndarray  # (N_test,) bool: test rows to score (False for references taken from the test split)
    deployable: object  # the gate that routes unlabelled images (the fitted gate, or its stand-in)
    state: dict  # json-able: selection and fitted gate parameters, saved with the run

    def metrics(self, scored: pd.DataFrame) -> dict[str, float]:
        """gate_acc overall and per group against the file-index truth (gated runs only)."""
        excluded = {"n_references_excluded": float(self.state["n_excluded"])}
        if not self.scorer.gate.assigns_condition:
            return excluded
        truth = scored["condition"].to_numpy()
        return {**gate_accuracy(scored["gate"], truth, scored["label"].to_numpy()), **excluded}


@torch.inference_mode()
def reference_outputs(
    method: Method, images: ImageSet, rt: Runtime
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(features per level, each (R, gh, gw, D); embeddings (R, E) or None) of the reference images."""
    features, embeddings = [], []
    for index in torch.arange(len(images)).split(rt.batch_size):
        with rt.autocast():
            out = method.forward(images.inputs(index, rt.device))
        features.append([f.float() for f in out.features])
        embeddings.append(None if out.embedding is None else out.embedding.float())
    stacked = [torch.cat(levels) for levels in zip(*features, strict=True)]
    return stacked, None if embeddings[0] is None else torch.cat(embeddings)


def deployable_gate(gate, raw: torch.Tensor, embeddings, condition: np.ndarray):
    """`gate` itself when it can route unlabelled images, else the p90 stand-in fitted on the references."""
    if not gate.needs_labels:
        return gate
    return make_gate(STAND_IN_GATE).fit(raw, embeddings, condition)


def build(
    cfg: DictConfig, method: Method, fit: HDMAPData, test: HDMAPData, to_input, rt: Runtime
) -> References | None:
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
    features, embeddings = reference_outputs(method, refs, rt)
    bank = ReferenceBank(
        selection.split(features),
        metric=method.bank_metric,
        context=cfg.fewshot.context,
        context_k=cfg.fewshot.context_k,
        context_ks=tuple(cfg.fewshot.context_ks),
        chunk_size=cfg.fewshot.chunk_size,
    )
    ref_raw = pool_raw[rows].to(rt.device)
    gate = make_gate(**OmegaConf.to_container(cfg.gating, resolve=True))
    gate.fit(ref_raw, embeddings, selection.condition)
    deployable = deployable_gate(gate, ref_raw, embeddings, selection.condition)
    state = {
        "source": cfg.fewshot.source,
        "k": cfg.fewshot.k,
        "n_excluded": selection.n_excluded,
        "reference_paths": pool_meta["path"].iloc[selection.positions].tolist(),
        "gate": gate.state(),
        "deployable_gate": deployable.state(),
    }
    scorer = ReferenceScorer(method, bank, gate, test.images, test.meta)
    return References(scorer, selection.keep[len(fit) :], deployable, state)
