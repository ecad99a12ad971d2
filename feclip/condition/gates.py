"""Cold/warm gates: per image, which condition's reference bank scores it, and how confidently.

HDMAP test images come from two operating conditions (cold, warm; docs/data.md §2.3). A gate
looks at an image and returns a `GateDecision`; `feclip.condition.banks.gated_terms` turns it into the
reference terms of a batch (one bank, each image's selected bank, or both weighted).

Pipeline use (references from `feclip.condition.banks.select_references(..., gated=gating != "none")`):

    gate = make_gate(cfg.gating.name, **params)              # params: the rest of the `gating` config group
    gate.fit(ref_images, ref_embedding, selection.condition) # (R, H, W) raw native images, (R, E) embeddings
    decision = gate.decide(images, out.embedding, meta)      # per batch; meta: the batch's rows or None
    terms = gated_terms(decision, per_bank_terms, batch)     # feclip.condition.banks
    extra = decision.columns()                               # per-image columns for the scores table
    json.dumps(gate.state())                                 # make_gate(**state) rebuilds the fitted gate

Facts on every gate: `needs_labels` (it reads the truth, e.g. the test file index: an upper bound, never
deployable) and `assigns_condition` (it routes images to a cold or a warm bank; `none` does not).

Gates (`make_gate(name, **params)`; unknown names or parameters raise `GateError` listing the allowed ones):
- `none`: no gating; decision mode 'mixed' (one bank of all references), condition 'mixed', p_cold 0.5.
- `oracle(split=None)`: the truth; split=None reads meta['condition'], an int: file_index < split -> cold.
  p_cold is 1 or 0. Needs the batch metadata.
- `p90(threshold=None, temperature=0.01)`: p90 = 90th percentile (linear interpolation, as np.percentile) of
  the raw pixel values of the NATIVE image (never a resized model input: resizing moved the gate's accuracy in
  docs/rivals.md 5.2). Cold iff p90 <= threshold. `fit`: threshold = (max cold p90 + min warm p90) / 2 over
  the labelled references; when they overlap (max cold >= min warm) it still takes the midpoint and warns.
  A threshold given as a parameter is kept (fit is then a no-op). p_cold = sigmoid((threshold - p90) /
  temperature), temperature in p90 units: 0.01 is about the half-gap between cold and warm normals in
  domain C (0.3007 / 0.3172), so images near the threshold get p_cold near 0.5.
- `clip_sim(topk=1, temperature=0.01)`: s_c, s_w = mean of the top-k cosine similarities of the image's CLIP
  embedding to the cold / warm reference embeddings (k capped at the bank size). Cold iff s_c >= s_w;
  p_cold = softmax([s_c, s_w] / temperature)[0] = sigmoid((s_c - s_w) / temperature).
- `random(seed=42)`: cold with probability 0.5 from a numpy generator seeded at construction (a control);
  p_cold is 1 or 0. A rebuilt gate repeats the same sequence of decisions for the same sequence of calls.
- `soft(base='p90', **base_params)`: the base gate's decision, with mode 'soft': the pipeline weights the two
  banks' distance maps per patch, d = p_cold * d_cold + (1 - p_cold) * d_warm.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from feclip.errors import FeclipError
from feclip.registry import Registry

CONDITIONS = ("cold", "warm")
MODES = ("mixed", "hard", "soft")


class GateError(FeclipError):
    """A gate name, parameter or input is invalid; the message names it and what was expected."""


@dataclass
class GateDecision:
    condition: np.ndarray  # (B,) str: 'cold' | 'warm' ('mixed' for the none gate)
    p_cold: torch.Tensor  # (B,) float in [0, 1]: confidence that the image is cold
    mode: str = "hard"  # how banks are used: 'mixed' (one bank) | 'hard' (selected bank) | 'soft' (weighted)

    def columns(self) -> dict[str, np.ndarray]:
        """Per-image columns for the scores table: gate (condition), gate_p_cold."""
        return {"gate": self.condition, "gate_p_cold": self.p_cold.detach().float().cpu().numpy()}


def _hard(cold: torch.Tensor) -> GateDecision:
    """Decision from a (B,) bool tensor, p_cold 1 for cold and 0 for warm."""
    cold = cold.bool()
    return GateDecision(np.where(cold.cpu().numpy(), "cold", "warm"), cold.float())


def _batch_size(
    images: torch.Tensor | None, cls_embedding: torch.Tensor | None, meta: pd.DataFrame | None
) -> int:
    for item in (images, cls_embedding, meta):
        if item is not None:
            return len(item)
    raise GateError("gate.decide got no images, no cls_embedding and no meta: nothing to decide on")


def _labels(condition, n: int) -> np.ndarray:
    """Reference conditions as a (R,) str array; both 'cold' and 'warm' must occur."""
    labels = np.asarray(condition).astype(str).reshape(-1)
    if len(labels) != n or set(labels) != set(CONDITIONS):
        raise GateError(
            f"gate.fit needs one condition per reference ({n}) with both 'cold' and 'warm', "
            f"got {len(labels)} values {sorted(set(labels))}"
        )
    return labels


def _positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        raise GateError(f"gating.{name}={value!r} is not allowed; expected a positive number")


@dataclass
class NoGate:
    """No gating: every image is scored against one mixed bank of all references."""

    name: ClassVar[str] = "none"
    needs_labels: ClassVar[bool] = False
    assigns_condition: ClassVar[bool] = False

    def fit(self, images=None, cls_embedding=None, condition=None) -> NoGate:
        return self

    def decide(self, images=None, cls_embedding=None, meta=None) -> GateDecision:
        b = _batch_size(images, cls_embedding, meta)
        return GateDecision(np.full(b, "mixed"), torch.full((b,), 0.5), mode="mixed")

    def state(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass
class OracleGate:
    """The true condition: meta['condition'] (split=None) or file_index < split -> cold."""

    split: int | None = None
    name: ClassVar[str] = "oracle"
    needs_labels: ClassVar[bool] = True
    assigns_condition: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.split is not None and (not isinstance(self.split, int) or isinstance(self.split, bool)):
            raise GateError(
                f"gating.split={self.split!r} is not allowed; expected an integer file index or null"
            )

    def fit(self, images=None, cls_embedding=None, condition=None) -> OracleGate:
        return self

    def decide(self, images=None, cls_embedding=None, meta: pd.DataFrame | None = None) -> GateDecision:
        if meta is None:
            raise GateError(
                "the oracle gate needs the batch metadata (file_index / condition), got meta=None"
            )
        if self.split is not None:
            return _hard(torch.as_tensor(meta["file_index"].to_numpy() < self.split))
        condition = meta["condition"].to_numpy().astype(str)
        if not set(condition) <= set(CONDITIONS):
            raise GateError(
                f"the oracle gate needs meta['condition'] in {CONDITIONS}, got {sorted(set(condition))}"
            )
        return _hard(torch.as_tensor(condition == "cold"))

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "split": self.split}


def p90(images: torch.Tensor) -> torch.Tensor:
    """images: (B, H, W) raw native HDMAP -> (B,) 90th percentile of each image's pixels (linear interp.)."""
    return torch.quantile(images.flatten(1).float(), 0.9, dim=1)


@dataclass
class P90Gate:
    """Cold iff the 90th percentile of the raw native pixels is <= threshold."""

    threshold: float | None = None
    temperature: float = 0.01
    name: ClassVar[str] = "p90"
    needs_labels: ClassVar[bool] = False
    assigns_condition: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _positive("temperature", self.temperature)
        if self.threshold is not None and not isinstance(self.threshold, (int, float)):
            raise GateError(f"gating.threshold={self.threshold!r} is not allowed; expected a number or null")

    def fit(self, images: torch.Tensor, cls_embedding=None, condition=None) -> P90Gate:
        """images: (R, H, W) raw native references, condition: (R,) 'cold' | 'warm'; no-op if thresholded."""
        if self.threshold is not None:
            return self
        labels = _labels(condition, len(images))
        values = p90(images).cpu().numpy()
        cold_max, warm_min = values[labels == "cold"].max(), values[labels == "warm"].min()
        self.threshold = float((cold_max + warm_min) / 2)
        if cold_max >= warm_min:
            warnings.warn(
                f"p90 gate: the references overlap (max cold p90 {cold_max:.4f} >= min warm p90 "
                f"{warm_min:.4f}); threshold = midpoint {self.threshold:.4f} misclassifies some of them",
                stacklevel=2,
            )
        return self

    def decide(self, images: torch.Tensor, cls_embedding=None, meta=None) -> GateDecision:
        """images: (B, H, W) raw native HDMAP."""
        if self.threshold is None:
            raise GateError(
                "p90 gate has no threshold: call fit() with labelled references or set gating.threshold"
            )
        values = p90(images)
        p_cold = torch.sigmoid((self.threshold - values) / self.temperature)
        return GateDecision(np.where((values <= self.threshold).cpu().numpy(), "cold", "warm"), p_cold)

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "threshold": self.threshold, "temperature": self.temperature}


@dataclass
class ClipSimGate:
    """Cold iff the image's CLIP embedding is nearer (top-k mean cosine) to the cold references."""

    topk: int = 1
    temperature: float = 0.01
    cold: Any = None  # (Rc, E) L2-normalised reference embeddings (tensor, or nested lists from state())
    warm: Any = None  # (Rw, E)
    name: ClassVar[str] = "clip_sim"
    needs_labels: ClassVar[bool] = False
    assigns_condition: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _positive("temperature", self.temperature)
        if not isinstance(self.topk, int) or isinstance(self.topk, bool) or self.topk < 1:
            raise GateError(f"gating.topk={self.topk!r} is not allowed; expected a positive integer")
        if (self.cold is None) != (self.warm is None):
            raise GateError("gating clip_sim: give both cold and warm reference embeddings or neither")
        if self.cold is not None:
            self.cold = F.normalize(torch.as_tensor(self.cold, dtype=torch.float32), dim=-1)
            self.warm = F.normalize(torch.as_tensor(self.warm, dtype=torch.float32), dim=-1)

    def fit(self, images=None, cls_embedding: torch.Tensor | None = None, condition=None) -> ClipSimGate:
        """cls_embedding: (R, E) of the references; condition: (R,) 'cold' | 'warm'."""
        if cls_embedding is None:
            raise GateError("the clip_sim gate needs the references' cls_embedding (R, E) to fit, got None")
        labels = _labels(condition, len(cls_embedding))
        emb = F.normalize(cls_embedding.detach().float().cpu(), dim=-1)
        self.cold, self.warm = emb[torch.as_tensor(labels == "cold")], emb[torch.as_tensor(labels == "warm")]
        return self

    def _similarity(self, emb: torch.Tensor, refs: torch.Tensor) -> torch.Tensor:
        """emb: (B, E) normalised, refs: (R, E) -> (B,) mean of the top-k cosine similarities."""
        sims = emb @ refs.to(emb.device).T
        return sims.topk(min(self.topk, refs.shape[0]), dim=1).values.mean(1)

    def decide(self, images=None, cls_embedding: torch.Tensor | None = None, meta=None) -> GateDecision:
        """cls_embedding: (B, E) final CLIP image embeddings."""
        if self.cold is None:
            raise GateError("clip_sim gate has no reference embeddings: call fit() first")
        if cls_embedding is None:
            raise GateError("the clip_sim gate needs cls_embedding (B, E), got None")
        emb = F.normalize(cls_embedding.float(), dim=-1)
        margin = self._similarity(emb, self.cold) - self._similarity(emb, self.warm)
        decision = _hard(margin >= 0)
        decision.p_cold = torch.sigmoid(margin / self.temperature)
        return decision

    def state(self) -> dict[str, Any]:
        refs = {k: None if v is None else v.tolist() for k, v in (("cold", self.cold), ("warm", self.warm))}
        return {"name": self.name, "topk": self.topk, "temperature": self.temperature, **refs}


@dataclass
class RandomGate:
    """Cold with probability 0.5, seeded (a control)."""

    seed: int = 42
    name: ClassVar[str] = "random"
    needs_labels: ClassVar[bool] = False
    assigns_condition: ClassVar[bool] = True
    _rng: np.random.Generator = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise GateError(f"gating.seed={self.seed!r} is not allowed; expected an integer")
        self._rng = np.random.default_rng(self.seed)

    def fit(self, images=None, cls_embedding=None, condition=None) -> RandomGate:
        return self

    def decide(self, images=None, cls_embedding=None, meta=None) -> GateDecision:
        b = _batch_size(images, cls_embedding, meta)
        return _hard(torch.as_tensor(self._rng.random(b) < 0.5))

    def state(self) -> dict[str, Any]:
        return {"name": self.name, "seed": self.seed}


@dataclass
class SoftGate:
    """A base gate's p_cold used as per-patch weights of the cold and warm banks' distances."""

    base: Any  # the underlying gate (p90, clip_sim, oracle, random)
    name: ClassVar[str] = "soft"
    assigns_condition: ClassVar[bool] = True

    @property
    def needs_labels(self) -> bool:
        return self.base.needs_labels

    def fit(self, images=None, cls_embedding=None, condition=None) -> SoftGate:
        self.base.fit(images, cls_embedding, condition)
        return self

    def decide(self, images=None, cls_embedding=None, meta=None) -> GateDecision:
        decision = self.base.decide(images, cls_embedding, meta)
        decision.mode = "soft"
        return decision

    def state(self) -> dict[str, Any]:
        base = self.base.state()
        return {"name": self.name, "base": base.pop("name"), **base}


GATES: Registry[type] = Registry(
    "cold/warm gate",
    key="gating.name",
    entries={g.name: g for g in (NoGate, OracleGate, P90Gate, ClipSimGate, RandomGate, SoftGate)},
)
SOFT_BASES: Registry[type] = Registry(
    "soft gate base",
    key="gating.base",
    entries={name: g for name, g in GATES.items() if g is not SoftGate and g.assigns_condition},
)


def make_gate(name: str, **params: Any):
    """A gate by name (GATES: none | oracle | p90 | clip_sim | random | soft; see the module docstring)."""
    gate = GATES.get_entry(name)
    if gate is SoftGate:
        return SoftGate(make_gate(SOFT_BASES.get_entry(params.pop("base", "p90")).name, **params))
    allowed = [f.name for f in dataclasses.fields(gate) if f.init]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise GateError(
            f"gating={name} has no parameter {', '.join(unknown)}; allowed: {', '.join(allowed) or 'none'}"
        )
    return gate(**params)
