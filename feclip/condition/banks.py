"""Reference banks: few-normal-shot memory banks (FE-CLIP paper §4.6; docs/method.md §11), cold/warm banks
chosen per image by a gate, CPD horizontal context, and the memory bank of PatchCore; shared by every method.

A bank stores, per bank name ('cold', 'warm' or 'mixed') and feature level (FE-CLIP: a tap; WinCLIP: the
patch scale and each window scale; PatchCore: its one aggregated level), the descriptors of all reference
patches. A query patch is matched to its nearest reference patch of the same level:
- metric `cosine` (FE-CLIP, WinCLIP): distance = 1 - max cosine similarity (descriptors L2-normalised);
- metric `l2` (PatchCore): distance = min Euclidean distance, with the index of the nearest patch.
'mixed' is the union of all stored banks. How a method turns the distances into scores is its own rule
(`feclip.methods.base.Method.with_references`); `gated_terms` applies a gate's decision to any per-bank terms.

Pipeline use (meta: the domain's metadata, train + test rows; features: `MethodOutput.features`):

    sel = select_references(meta, cfg.fewshot.source, cfg.fewshot.k, cfg.seed, gated=gating != "none")
    bank = ReferenceBank(sel.split(reference_features), metric=method.bank_metric, context=...)
    test rows to score: sel.keep (bool over meta rows; drops test references), sel.n_excluded to log
    per batch: terms = gated_terms(gate.decide(...), lambda name, rows: method.reference_terms(...), B)
               score, amap = method.with_references(out, terms)

Reference sources (SOURCES):
- `test_extremes` (the user's protocol): the k lowest file indices of the test/good rows in `meta` form the
  'cold' bank, the k highest the 'warm' bank (the file index is the only cold/warm label, docs/data.md §1.1:
  index 0-499 cold, 500-999 warm; "coldest/warmest" means lowest/highest index, not a measured temperature);
  all 2k are excluded from scoring. The job passes the study split's refs part as those rows
  (`feclip.evaluation.split`), or every test row under `eval.split.protocol=whole_test`.
- `train`: k train/good images drawn without replacement by a numpy generator seeded with `seed`, one 'mixed'
  bank. Train images carry no condition label, so a gated run with train references is rejected (`gated=True`)
  rather than labelling them with a p90 gate whose threshold would itself need labelled test normals.

Horizontal context (CONTEXTS; CPD, docs/rivals.md 6.1): ctx_k(i, j) = mean f(i, j-k .. j+k) in the same token
row, a 1x(2k+1) average pool with stride 1 and zero padding where the zeros are counted (edge contexts
shrink), exactly as CPD-PatchCore. 'mean_k' -> [f | ctx_k], 'multi_k' -> [f | ctx_ks[0] | ctx_ks[1] | ...].
The bank applies it identically to reference and query features (then L2-normalises for the cosine metric).

Memory: one float32 (R*gh*gw, D') matrix per level and bank (and one for their union), linear in k; a query
chunk costs chunk x R*gh*gw.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from feclip.condition.gates import GateDecision
from feclip.errors import FeclipError
from feclip.precision import float32
from feclip.registry import choices

SOURCES = choices("reference source", "fewshot.source", ("train", "test_extremes"))
CONTEXTS = choices("horizontal context", "fewshot.context", ("none", "mean_k", "multi_k"))
METRICS = choices("bank metric", "bank metric", ("cosine", "l2"))
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
    CONTEXTS.get_entry(mode)
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


def chunks(n: int, chunk_size: int) -> Iterator[slice]:
    """Slices of 0..n-1, chunk_size at a time."""
    return (slice(start, start + chunk_size) for start in range(0, n, chunk_size))


@float32
def knn(
    query: torch.Tensor, bank: torch.Tensor, k: int, *, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """query (M, D), bank (K, D) -> Euclidean distance (M, k) ascending and bank index (M, k) long.

    Neighbours are ranked on ||q||^2 - 2 q.b + ||b||^2 for `chunk_size` queries at a time (a (chunk, K)
    matrix); the returned distances are recomputed exactly as ||q - b|| for the chosen pairs."""
    if bank.ndim != 2 or bank.shape[0] == 0 or query.ndim != 2 or query.shape[1] != bank.shape[1]:
        raise FewShotError(
            f"kNN query {tuple(query.shape)} vs bank {tuple(bank.shape)}: expected (M, D) and (K >= 1, D)"
        )
    bank_sq = bank.pow(2).sum(1)
    index = torch.cat(
        [
            (bank_sq - 2 * q @ bank.T).topk(k, dim=1, largest=False).indices  # ||q||^2 adds a row constant
            for q in (query[part] for part in chunks(query.shape[0], chunk_size))
        ]
    )
    distance = torch.linalg.vector_norm(query[:, None] - bank[index], dim=-1)
    return distance, index


def nearest(
    query: torch.Tensor, bank: torch.Tensor, *, chunk_size: int = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """query (M, D), bank (K, D) -> distance to the nearest bank row (M,) and its index (M,) long."""
    distance, index = knn(query, bank, 1, chunk_size=chunk_size)
    return distance[:, 0], index[:, 0]


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
    SOURCES.get_entry(source)
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
    """Per bank and feature level, the descriptors of all reference patches, (R*gh*gw, D')."""

    def __init__(
        self,
        features: dict[str, list[torch.Tensor]],
        *,
        metric: str = "cosine",
        context: str = "none",
        context_k: int = 2,
        context_ks: tuple[int, ...] = (2, 3),
        chunk_size: int = 4096,
    ):
        """features: bank name -> list over levels of (R, gh, gw, D); 'mixed' is also the union of all."""
        _positive_int("fewshot.chunk_size", chunk_size)
        levels = {name: len(grids) for name, grids in features.items()}
        if not levels or len(set(levels.values())) != 1 or 0 in levels.values():
            raise FewShotError(f"reference banks need the same number (> 0) of levels, got {levels}")
        self.metric = METRICS.get_entry(metric)
        self.context, self.context_k, self.context_ks = context, context_k, tuple(context_ks)
        self.chunk_size = chunk_size
        described = {name: [self.describe(f) for f in grids] for name, grids in features.items()}
        self._store(described)

    def _store(self, described: dict[str, list[torch.Tensor]]) -> None:
        self.banks = dict(described)
        if MIXED not in self.banks:
            self.banks[MIXED] = [torch.cat(level) for level in zip(*self.banks.values(), strict=True)]
        self.n_levels, self.device = len(self.banks[MIXED]), self.banks[MIXED][0].device

    def settings(self) -> dict:
        """JSON-able settings; with `tensors()` they rebuild the bank (`from_saved`)."""
        return {
            "metric": self.metric,
            "context": self.context,
            "context_k": self.context_k,
            "context_ks": list(self.context_ks),
            "chunk_size": self.chunk_size,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored descriptors as '<bank>/<level>' -> (K, D') (the union 'mixed' is rebuilt on load)."""
        stored = {
            name: levels for name, levels in self.banks.items() if name != MIXED or len(self.banks) == 1
        }
        return {
            f"{name}/{i}": d.contiguous().cpu()
            for name, levels in stored.items()
            for i, d in enumerate(levels)
        }

    @classmethod
    def from_saved(cls, settings: dict, tensors: dict[str, torch.Tensor]) -> ReferenceBank:
        """The bank `settings()` + `tensors()` describe (descriptors are used as stored)."""
        bank = cls.__new__(cls)
        bank.metric = METRICS.get_entry(settings["metric"])
        bank.context, bank.context_k = settings["context"], settings["context_k"]
        bank.context_ks, bank.chunk_size = tuple(settings["context_ks"]), settings["chunk_size"]
        names = dict.fromkeys(key.rsplit("/", 1)[0] for key in tensors)
        levels = {
            name: sorted(int(k.rsplit("/", 1)[1]) for k in tensors if k.rsplit("/", 1)[0] == name)
            for name in names
        }
        bank._store({name: [tensors[f"{name}/{i}"] for i in levels[name]] for name in names})
        return bank

    @property
    def names(self) -> tuple[str, ...]:
        """Bank names `nearest` accepts: the stored banks and 'mixed'."""
        return tuple(self.banks)

    def describe(self, grid: torch.Tensor) -> torch.Tensor:
        """grid: (N, gh, gw, D) -> (N*gh*gw, D') float32, context-extended (L2-normalised for cosine)."""
        described = horizontal_context(grid.float(), self.context, self.context_k, self.context_ks)
        flat = described.flatten(0, 2)
        return F.normalize(flat, dim=-1) if self.metric == "cosine" else flat

    def descriptors(self, bank_name: str, level: int) -> torch.Tensor:
        """(K, D') the stored descriptors of one bank and level (rows = the indices `nearest` returns)."""
        return self.banks[self._checked(bank_name)][level]

    def _checked(self, bank_name: str) -> str:
        if bank_name not in self.banks:
            raise FewShotError(
                f"reference bank {bank_name!r} was not built; available: {', '.join(self.names)}"
            )
        return bank_name

    @float32
    def _match(self, query: torch.Tensor, bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """query (M, D') described -> (distance (M,), index (M,)) of the nearest bank row, in chunks."""
        distances, indices = [], []
        for chunk in query.split(self.chunk_size):
            if self.metric == "cosine":
                best, index = (chunk @ bank.T).max(dim=1)
                distances.append(1 - best)
            else:
                distance, index = nearest(chunk, bank, chunk_size=self.chunk_size)
                distances.append(distance)
            indices.append(index)
        return torch.cat(distances), torch.cat(indices)

    def nearest(
        self, query: list[torch.Tensor], bank_name: str = MIXED
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """query: list over levels of (B, gh, gw, D) -> per level (distance, index), each (B, gh, gw)."""
        self._checked(bank_name)
        if len(query) != self.n_levels:
            raise FewShotError(
                f"query has {len(query)} feature levels; the reference bank has {self.n_levels}"
            )
        matches = []
        for level, grid in enumerate(query):
            b, gh, gw, _ = grid.shape
            distance, index = self._match(self.describe(grid.to(self.device)), self.banks[bank_name][level])
            matches.append((distance.view(b, gh, gw), index.view(b, gh, gw)))
        return matches

    def distance_map(self, query: list[torch.Tensor], bank_name: str = MIXED) -> torch.Tensor:
        """query: list over levels of (B, gh, gw, D) -> (B, gh, gw): the mean over levels of the distances."""
        return torch.stack([distance for distance, _ in self.nearest(query, bank_name)]).mean(dim=0)


TermsFn = Callable[[str, torch.Tensor], dict[str, torch.Tensor]]


def gated_terms(decision: GateDecision, terms: TermsFn, batch: int) -> dict[str, torch.Tensor]:
    """Per-image reference terms of a batch by decision.mode: 'mixed' -> terms of the mixed bank; 'hard' ->
    each image's selected bank; 'soft' -> p_cold * cold terms + (1 - p_cold) * warm terms, per element.

    terms(bank_name, rows (b,) long) -> {name: tensor with leading dim b}."""
    every = torch.arange(batch)
    if decision.mode == "mixed":
        return terms(MIXED, every)
    if decision.mode == "soft":
        cold, warm = terms("cold", every), terms("warm", every)
        return {key: _mix(decision.p_cold, cold[key], warm[key]) for key in cold}
    if decision.mode != "hard":
        raise FewShotError(f"gate decision mode {decision.mode!r}; expected one of: mixed, hard, soft")
    condition = np.asarray(decision.condition)
    if not set(condition) <= {"cold", "warm"}:
        raise FewShotError(f"hard gating needs conditions 'cold'/'warm', got {sorted(set(condition))}")
    merged: dict[str, torch.Tensor] = {}
    for name in ("cold", "warm"):
        rows = torch.as_tensor(np.flatnonzero(condition == name), dtype=torch.long)
        if len(rows):
            for key, value in terms(name, rows).items():
                merged.setdefault(key, value.new_empty((batch, *value.shape[1:])))[rows.to(value.device)] = (
                    value
                )
    return merged


def _mix(p_cold: torch.Tensor, cold: torch.Tensor, warm: torch.Tensor) -> torch.Tensor:
    p = p_cold.float().to(cold.device).view(-1, *([1] * (cold.ndim - 1)))
    return p * cold + (1 - p) * warm
