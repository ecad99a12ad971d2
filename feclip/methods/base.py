"""The interface every method implements, so that data, reference banks and gates, calibration, metrics,
figures, tracking, the report and saved models are shared, not copied per method.

A method wraps one pure `nn.Module` (the model) and tells the harness:
- `input_stats()`: the (mean, std) its input is normalised with (the job builds the HDMAP input transform);
- `fit(normals=..., aux=..., log_epoch=...)`: learn from train normals and/or an auxiliary labelled source
  (FE-CLIP trains its adapters on `aux`; PatchCore builds its memory bank from `normals`; WinCLIP is
  zero-shot and fits nothing); returns the loss history;
- `frozen_key()` / `frozen(inputs)` / `forward(inputs or frozen, image_size)`: what of the forward is frozen
  and can be cached per image (`feclip.cache`), and the scores;
- `reference_terms(...)` / `with_references(...)`: how reference banks (few-shot, condition-aware) change a
  batch's scores (`feclip.condition`);
- `state()` / `describe()` and the class method `load(...)`: what a checkpoint holds;
- `reads`: the config groups and keys its results depend on beyond the shared ones (`feclip.identity`), and
  the headline its variant always names: its run name, variant, params and identity (`feclip.config_hash`)
  leave out everything else, so a sweep axis it does not read makes no variant (`tests/test_identity.py`
  checks that changing the rest changes none of its scores).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from feclip.identity import EVERYTHING, Reads


@dataclass
class MethodOutput:
    """A method's output for images (B, 3, h, w).

    score: (B,) image anomaly scores, map: (B, h, w) anomaly maps at the input size (None for a method that
    scores only against reference banks); features: per feature level (B, gh, gw, D), what reference banks
    store and match; embedding: (B, E) global image embedding (the clip_sim gate) or None."""

    score: torch.Tensor | None
    map: torch.Tensor | None
    features: list[torch.Tensor] = field(default_factory=list)
    embedding: torch.Tensor | None = None


class Method(abc.ABC):
    """One anomaly-detection method; `model` is its pure nn.Module (see the module docstring)."""

    name: ClassVar[str]
    bank_metric: ClassVar[str] = "cosine"  # distance of its reference banks: cosine | l2
    caches_frozen: ClassVar[bool] = False  # whether `frozen` / `forward(frozen=...)` exist
    frozen_feeds: ClassVar[str] = "backbone"  # the policy operation its frozen features feed (cache dtype)
    reads: ClassVar[Reads] = EVERYTHING  # the config its results depend on (declared: nothing is left out)
    model: nn.Module

    @classmethod  # noqa: B027 (an optional hook: most methods need no checks of their own)
    def validate(cls, cfg) -> None:
        """Raise a one-line FeclipError for config values only this method can judge (before any work)."""

    @abc.abstractmethod
    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(mean, std) per channel of the model input."""

    @property
    @abc.abstractmethod
    def input_size(self) -> tuple[int, int]:
        """(h, w) of the model input."""

    @classmethod
    def config_backbone(cls, cfg) -> str:
        """The backbone the config gives this method (a run tag)."""
        return cfg.backbone.name

    @classmethod
    def config_weights(cls, cfg):
        """The backbone weights the config gives this method: None (random init), a tag or a file."""
        return cfg.backbone.pretrained

    @classmethod
    def config_random_init(cls, cfg) -> bool:
        """Whether the config gives this method random backbone weights (read before it is built)."""
        return cfg.backbone.pretrained is None

    @property
    def random_init(self) -> bool:
        """Whether the backbone has random weights (numbers then test the pipeline, not the method)."""
        return False

    def tags(self) -> dict[str, str]:
        """Run tags the method adds once built (e.g. a checkpoint transfer)."""
        return {}

    def to(self, device: torch.device) -> Method:
        self.model.to(device)
        return self

    def fit(self, *, normals=None, aux=None, rt=None, frozen=None, log_epoch=None) -> dict[str, list[float]]:
        """Learn from train normals and/or the auxiliary source (ImageSets or None); `frozen(images)` gives
        their cached frozen features (or None); returns the loss history {name: per-epoch values}."""
        return {}

    def frozen_key(self) -> str:
        """Identity of the frozen part of the forward (weights, where it ends) for the feature cache."""
        raise NotImplementedError(f"method {self.name} caches nothing")

    def frozen(self, inputs: torch.Tensor) -> torch.Tensor:
        """inputs (B, 3, h, w) -> the frozen features (B, ...) that `forward(frozen=...)` continues from."""
        raise NotImplementedError(f"method {self.name} caches nothing")

    @abc.abstractmethod
    def forward(self, inputs=None, *, frozen=None) -> MethodOutput:
        """Scores of inputs (B, 3, h, w), or of their frozen features (`feclip.cache.Frozen`)."""

    def reference_terms(self, out: MethodOutput, bank, bank_name: str, rows: torch.Tensor) -> dict:
        """Per-image tensors (leading dim = len(rows)) from matching rows of `out` against one bank; the
        gate mixes them between banks (hard: per image, soft: convex combination)."""
        return {"distance": bank.distance_map([f[rows] for f in out.features], bank_name)}

    @abc.abstractmethod
    def with_references(self, out: MethodOutput, terms: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(score (B,), map (B, h, w)) of a batch given its mixed reference terms."""

    def describe(self) -> dict[str, Any]:
        """JSON description saved with a checkpoint (method name, its config, the backbone identity)."""
        return {"method": self.name}

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint stores (trained or fitted state; not the frozen backbone)."""
        return {}
