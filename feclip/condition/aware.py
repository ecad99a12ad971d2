"""Condition-aware scoring: reference banks chosen per image by a cold/warm gate, for any method.

`build` selects the references (from the fit normals or the extremes of a pool of test normals: the study
split's refs part, or the whole test set under `eval.split.protocol=whole_test`), runs the method on them once
(their `MethodOutput.features` fill the banks, their embeddings feed the clip_sim gate), fits the gate on
them, and returns a `ReferenceScorer` that `feclip.evaluation.inference.predict` calls per batch once bound to
the set it scores (`for_images`). Pool rows taken as references are marked (`keep` False): never scored.

Conditioning never reads the labels of a scored image, except where the run says so: `reads_test_labels`
names what does (a gate that needs labels; per-condition thresholds picked by the known condition), and the
job marks such a run not deployable.

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
    keep: np.ndarray  # (N_pool,) bool: False for the pool's rows taken as references (never scored)
    deployable: object  # the gate that routes unlabelled images (the fitted gate, or its stand-in)
    state: dict  # json-able: selection and fitted gate parameters, saved with the run

    def metrics(self, scored: pd.DataFrame) -> dict[str, float]:
        """gate_acc overall and per group against the file-index truth (gated runs only)."""
        if not self.scorer.gate.assigns_condition:
            return {}
        return gate_accuracy(scored["gate"], scored["condition"].to_numpy(), scored["label"].to_numpy())


@torch.inference_mode()
def reference_outputs(
    method: Method, images: ImageSet, rt: Runtime
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(features per level, each (R, gh, gw, D); embeddings (R, E) or None) of the reference images."""
    features, embeddings = [], []
    for index in torch.arange(len(images)).split(rt.batch_size):
        with rt.policy():
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


def reads_test_labels(cfg: DictConfig) -> list[str]:
    """What in the run reads the labels of the images it scores (empty: its decisions are deployable)."""
    gate = make_gate(**OmegaConf.to_container(cfg.gating, resolve=True))
    reads = []
    if gate.needs_labels:
        reads.append(f"gating={cfg.gating.name} routes each image by its test condition")
    if cfg.eval.threshold.per_condition and not gate.assigns_condition:
        reads.append("eval.threshold.per_condition without a gate picks thresholds by the test condition")
    return reads


def build(
    cfg: DictConfig, method: Method, fit: HDMAPData, pool: HDMAPData, to_input, rt: Runtime
) -> References | None:
    """References and gate from `cfg.fewshot` / `cfg.gating`, or None when fewshot.k == 0; pool: the test
    rows `fewshot.source=test_extremes` may take references from."""
    if cfg.fewshot.k == 0:
        return None
    pool_meta = pd.concat([fit.meta, pool.meta], ignore_index=True)
    pool_raw = torch.cat([fit.images, pool.images])
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
    scorer = ReferenceScorer(method, bank, gate, raw=None, meta=None)
    return References(scorer, selection.keep[len(fit) :], deployable, state)
