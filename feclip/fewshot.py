"""Few-normal-shot reference banks (FE-CLIP paper §4.6) with CPD horizontal context and cold/warm banks.

Patch features of a few normal reference images at the FE-CLIP tap blocks form memory banks; every query patch
gets 1 - max cosine similarity to a bank's patches, averaged over taps -> a few-shot map that is added to the
FE-CLIP map and score. HDMAP references can be split by condition (cold / warm banks, chosen per image by a
gate from `feclip.gating`; ../shared/docs/baselines.md §3.2).

Pipeline use (meta: the domain's metadata, train + test rows; features from `FEClipOutput.patch_features`):

    sel = select_references(meta, cfg.fewshot.source, cfg.fewshot.k, cfg.seed, gated=gating != "none")
    ref_out = model(inputs of rows sel.positions)                 # or from cached tokens
    bank = ReferenceBank(sel.split(ref_out.patch_features), cfg.fewshot.context, cfg.fewshot.context_k,
                         cfg.fewshot.context_ks, cfg.fewshot.chunk_size)
    test rows to score: sel.keep (bool over meta rows; drops test references), sel.n_excluded to log
    per batch: d = gated_distance(bank, out.patch_features, gate.decide(...))            # (B, gh, gw)
               score, amap = combine(out.map, out.score, d, cfg.fewshot.weight_map, cfg.fewshot.weight_score)

Reference sources:
- `test_extremes` (the user's protocol): the k lowest file indices of test/good form the 'cold' bank, the k
  highest the 'warm' bank; all 2k are excluded from scoring.
- `train`: k train/good images drawn without replacement by a numpy generator seeded with `seed`, one 'mixed'
  bank. Train images carry no condition label, so a gated run with train references is rejected (`gated=True`)
  rather than labelling them with a p90 gate whose threshold would itself need labelled test normals.

Horizontal context (CPD, baselines §3.1): ctx_k(i, j) = mean of f(i, j-k .. j+k) in the same token row, a
1x(2k+1) average pool with stride 1 and zero padding where the zeros are counted (edge contexts shrink),
exactly as CPD-PatchCore. CPD pooled 37x37 DINOv2 maps after PatchCore's 3x3 feature pooler; here it acts
directly on the FE-CLIP token grid. 'mean_k' -> [f | ctx_k], 'multi_k' -> [f | ctx_ks[0] | ctx_ks[1] | ...].
The bank applies it identically to reference and query features, then L2-normalises the concatenation.

Memory: one float32 (R*gh*gw, D') matrix per tap and bank, linear in k; a query chunk costs chunk x R*gh*gw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from feclip.errors import FeclipError
from feclip.gating import GateDecision

SOURCES = ("train", "test_extremes")
CONTEXTS = ("none", "mean_k", "multi_k")
MIXED = "mixed"


class FewShotError(FeclipError):
    """A few-shot setting or input is invalid; the message names it and what was expected."""


def _positive_int(key: str, value) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise FewShotError(f"{key}={value!r} is not allowed; expected a positive integer")


def _row_context(features: torch.Tensor, k: int) -> torch.Tensor:
    """features: (B, gh, gw, D) -> (B, gh, gw, D) mean over columns j-k..j+k, zero padding counted."""
    grid = features.permute(0, 3, 1, 2)
    pooled = F.avg_pool2d(grid, (1, 2 * k + 1), stride=1, padding=(0, k), count_include_pad=True)
    return pooled.permute(0, 2, 3, 1)


def horizontal_context(
    features: torch.Tensor, mode: str = "none", k: int = 2, ks: tuple[int, ...] = (2, 3)
) -> torch.Tensor:
    """features: (B, gh, gw, D) -> 'none': (B, gh, gw, D); 'mean_k': [f | ctx_k] (.., 2D);
    'multi_k': [f | ctx_ks[0] | ...] (.., (1 + len(ks)) D)."""
    if mode not in CONTEXTS:
        raise FewShotError(f"fewshot.context={mode!r} is not allowed; expected one of: {', '.join(CONTEXTS)}")
    if mode == "none":
        return features
    widths = [k] if mode == "mean_k" else list(ks)
    if not widths:
        raise FewShotError(
            "fewshot.context_ks=[] is not allowed; expected a non-empty list of positive integers"
        )
    for width in widths:
        _positive_int("fewshot.context_k" if mode == "mean_k" else "fewshot.context_ks", width)
    return torch.cat([features, *(_row_context(features, int(w)) for w in widths)], dim=-1)


@dataclass(frozen=True)
class ReferenceSelection:
    banks: dict[str, np.ndarray]  # bank name ('cold', 'warm' or 'mixed') -> (R_bank,) row positions into meta
    exclude: np.ndarray  # (n_excluded,) sorted row positions never to score (references from the test split)
    n_rows: int  # rows of the meta the positions index

    @property
    def positions(self) -> np.ndarray:
        """(R,) all reference rows, bank after bank (the order `split` expects features in)."""
        return np.concatenate(list(self.banks.values()))

    @property
    def condition(self) -> np.ndarray:
        """(R,) bank name of each row of `positions` (the labels a gate is fitted on)."""
        return np.concatenate([np.full(len(rows), name) for name, rows in self.banks.items()])

    @property
    def n_excluded(self) -> int:
        return len(self.exclude)

    @property
    def keep(self) -> np.ndarray:
        """(n_rows,) bool: False at the excluded rows."""
        keep = np.ones(self.n_rows, dtype=bool)
        keep[self.exclude] = False
        return keep

    def split(self, features: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        """features: list over taps of (R, gh, gw, D), rows as `positions` -> bank name -> list over taps."""
        sizes = [len(rows) for rows in self.banks.values()]
        if any(len(f) != sum(sizes) for f in features):
            raise FewShotError(
                f"reference features have {[len(f) for f in features]} rows; expected {sum(sizes)}"
            )
        parts = [f.split(sizes) for f in features]
        return {name: [p[i] for p in parts] for i, name in enumerate(self.banks)}


def select_references(
    meta: pd.DataFrame, source: str, k: int, seed: int = 0, gated: bool = False
) -> ReferenceSelection:
    """Reference rows of `meta` (columns split, label, file_index), k per bank; gated: cold/warm banks."""
    if source not in SOURCES:
        raise FewShotError(f"fewshot.source={source!r} is not allowed; expected one of: {', '.join(SOURCES)}")
    _positive_int("fewshot.k", k)
    missing = sorted({"split", "label", "file_index"} - set(meta.columns))
    if missing:
        raise FewShotError(
            f"reference selection needs meta columns split, label, file_index; missing {missing}"
        )
    split = "train" if source == "train" else "test"
    good = np.flatnonzero(((meta["split"] == split) & (meta["label"] == 0)).to_numpy())
    needed = k if source == "train" else 2 * k
    if len(good) < needed:
        raise FewShotError(
            f"fewshot.k={k} with source={source} needs {needed} {split}/good images, found {len(good)}"
        )
    if source == "train":
        if gated:
            raise FewShotError(
                "fewshot.source=train has no cold/warm labels but the gate needs cold and warm banks; "
                "use fewshot.source=test_extremes or gating=none"
            )
        rows = np.sort(np.random.default_rng(seed).choice(good, size=k, replace=False))
        return ReferenceSelection({MIXED: rows}, np.empty(0, dtype=np.int64), len(meta))
    ordered = good[np.argsort(meta["file_index"].to_numpy()[good], kind="stable")]
    cold, warm = ordered[:k], ordered[::-1][:k]
    return ReferenceSelection({"cold": cold, "warm": warm}, np.sort(np.concatenate([cold, warm])), len(meta))


class ReferenceBank:
    """Per bank and tap, the L2-normalised context descriptors of all reference patches, (R*gh*gw, D')."""

    def __init__(
        self,
        features: dict[str, list[torch.Tensor]],
        context: str = "none",
        context_k: int = 2,
        context_ks: tuple[int, ...] = (2, 3),
        chunk_size: int = 4096,
    ):
        """features: bank name -> list over taps of (R, gh, gw, D); 'mixed' is also the union of all banks."""
        _positive_int("fewshot.chunk_size", chunk_size)
        taps = {name: len(grids) for name, grids in features.items()}
        if not taps or len(set(taps.values())) != 1 or 0 in taps.values():
            raise FewShotError(f"reference banks need the same number (> 0) of taps, got {taps}")
        self.context, self.context_k, self.context_ks = context, context_k, tuple(context_ks)
        self.chunk_size = chunk_size
        self.banks = {name: [self._descriptors(f) for f in taps] for name, taps in features.items()}
        first = next(iter(self.banks.values()))
        self.n_taps, self.device = len(first), first[0].device

    @property
    def names(self) -> tuple[str, ...]:
        """Bank names distance_map accepts: the stored banks and 'mixed'."""
        return tuple(dict.fromkeys([*self.banks, MIXED]))

    def _descriptors(self, grid: torch.Tensor) -> torch.Tensor:
        """grid: (N, gh, gw, D) -> (N*gh*gw, D') float32, context-extended and L2-normalised."""
        described = horizontal_context(grid.float(), self.context, self.context_k, self.context_ks)
        return F.normalize(described.flatten(0, 2), dim=-1)

    def _max_similarity(self, query: torch.Tensor, tap: int, members: list[str]) -> torch.Tensor:
        """query: (M, D') normalised -> (M,) max cosine similarity over the members' patches at `tap`."""
        best = []
        for chunk in query.split(self.chunk_size):
            sims = [(chunk @ self.banks[name][tap].T).amax(dim=1) for name in members]
            best.append(torch.stack(sims).amax(dim=0))
        return torch.cat(best)

    def distance_map(self, query: list[torch.Tensor], bank_name: str = MIXED) -> torch.Tensor:
        """query: list over taps of (B, gh, gw, D) -> (B, gh, gw): mean over taps of 1 - max cosine sim."""
        if bank_name not in self.names:
            raise FewShotError(
                f"reference bank {bank_name!r} was not built; available: {', '.join(self.names)}"
            )
        if len(query) != self.n_taps:
            raise FewShotError(f"query has {len(query)} taps; the reference bank has {self.n_taps}")
        members = [bank_name] if bank_name in self.banks else list(self.banks)
        b, gh, gw, _ = query[0].shape
        maps = [
            1 - self._max_similarity(self._descriptors(q.to(self.device)), tap, members).view(b, gh, gw)
            for tap, q in enumerate(query)
        ]
        return torch.stack(maps).mean(dim=0)


def gated_distance(bank: ReferenceBank, query: list[torch.Tensor], decision: GateDecision) -> torch.Tensor:
    """query: list over taps of (B, gh, gw, D) -> (B, gh, gw) few-shot distance, by decision.mode: 'mixed' ->
    the mixed bank; 'hard' -> each image's selected bank; 'soft' -> p_cold * d_cold + (1 - p_cold) * d_warm.
    """
    if decision.mode == "mixed":
        return bank.distance_map(query, MIXED)
    if decision.mode == "soft":
        p = decision.p_cold.float().to(bank.device)[:, None, None]
        return p * bank.distance_map(query, "cold") + (1 - p) * bank.distance_map(query, "warm")
    if decision.mode != "hard":
        raise FewShotError(f"gate decision mode {decision.mode!r}; expected one of: mixed, hard, soft")
    condition = np.asarray(decision.condition)
    if not set(condition) <= {"cold", "warm"}:
        raise FewShotError(f"hard gating needs conditions 'cold'/'warm', got {sorted(set(condition))}")
    out = torch.empty(query[0].shape[:3], device=bank.device)
    for name in ("cold", "warm"):
        rows = torch.as_tensor(np.flatnonzero(condition == name))
        if len(rows):
            out[rows.to(bank.device)] = bank.distance_map([q[rows.to(q.device)] for q in query], name)
    return out


def combine(
    feclip_map: torch.Tensor,
    feclip_score: torch.Tensor,
    fewshot_map: torch.Tensor,
    weight_map: float = 1.0,
    weight_score: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """feclip_map: (B, h, w), feclip_score: (B,), fewshot_map: (B, gh, gw) -> (score (B,), map (B, h, w)).

    map = feclip_map + weight_map * bilinear(fewshot_map to (h, w)); score = feclip_score + weight_score *
    max(fewshot_map), the max taken on the token grid (paper §4.6)."""
    fewshot_map = fewshot_map.float().to(feclip_map.device)
    up = F.interpolate(fewshot_map[:, None], size=feclip_map.shape[-2:], mode="bilinear", align_corners=False)
    score = feclip_score.float() + weight_score * fewshot_map.flatten(1).amax(dim=1)
    return score, feclip_map.float() + weight_map * up[:, 0]
