"""The FE-CLIP model: frozen CLIP ViT + frequency adapters at tap blocks + per-tap scores and anomaly maps.

At every tap block n (0-based index into the ViT's blocks), after the block ran:
  f_hat = lam * (FFE(f) + LFS(f)) + (1 - lam) * f     on the patch tokens f only (class token untouched);
f_hat replaces the patch tokens in the stream entering block n + 1. Per tap, with ln_post before both heads:
  score_n = softmax(cos(proj_clip(cls), g) / tau)[abnormal]      (CLIP's frozen projection)
  map_n   = softmax(cos(fc(f_hat), g) / tau)[abnormal] per patch (or the logit margin), bilinear to (h, w)
with g = text features [normal, abnormal] and fc ONE learnable Linear(D, E) shared by all taps, initialised
from CLIP's projection (an untrained fc reproduces CLIP's own patch projection). The outputs are the means
over taps; `score='cls+max_map'` adds max(map); `smoothing_sigma` Gaussian-blurs the final map.
`adapters=False` is the plain-CLIP baseline: no adapters, CLIP's projection for the patches too.

Tap rules (L blocks, 0-based; ViT-L: L = 24, ViT-B: 12, feclip-tiny: 4):
- "groups":   end of each of n_taps equal layer groups, (i + 1) * L // n_taps - 1: ViT-L [5, 11, 17, 23],
              ViT-B [2, 5, 8, 11], tiny [0, 1, 2, 3] (paper figure; the default);
- "last4":    [L - 4, ..., L - 1] (n_taps ignored);
- "spread3":  floor(5L/8), floor(6L/8), floor(7L/8) and L - 1, duplicates dropped (n_taps ignored):
              ViT-L [15, 18, 21, 23], ViT-B [7, 9, 10, 11], tiny [2, 3];
- "linspace": n_taps evenly spaced from 0 to L - 1, rounded half up: ViT-L [0, 8, 15, 23];
- a list:     explicit strictly increasing block indices in [0, L - 1].

The forward is split at the first tap for a frozen-token cache: `pre_tap_tokens` = embed + blocks up to
and including the first tap block (everything before the first adapter, all frozen), `forward_from_tokens`
the rest; forward(x) == forward_from_tokens(pre_tap_tokens(x), x.shape[-2:]). Head math (cosines, softmax,
maps) and the adapters run in float32 with autocast off; the frozen blocks follow the caller's autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from feclip.errors import FeclipError
from feclip.model.adapters import FFE, LFS, LFS_STATISTICS, ConvAdapter, TapAdapter
from feclip.model.backbone import ClipBackbone
from feclip.model.frequency import TRANSFORMS, check_window

TAP_PRESETS = ("groups", "last4", "spread3", "linspace")
SCORES = ("cls", "cls+max_map")
MAPS = ("prob", "logit_margin")
TRAINABLE_PREFIXES = ("adapters.", "fc.")


class HeadError(FeclipError):
    """An FE-CLIP option, tap list or input is invalid."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _choice(name: str, value, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise HeadError(f"FEClipConfig.{name}={value!r}: expected one of {', '.join(allowed)}")


@dataclass
class FEClipConfig:
    """FE-CLIP head options (defaults: ../shared/docs/feclip_method.md section 4). Lists are accepted for
    the windows and for `taps` (e.g. from JSON or Hydra)."""

    taps: str | list[int] = "groups"
    n_taps: int = 4
    lam: float = 0.1
    freq: str = "dct"
    ffe: bool = True
    ffe_window: tuple[int, int] = (3, 3)
    lfs: bool = True
    lfs_window: tuple[int, int] = (3, 3)
    lfs_statistic: str = "mean"
    lfs_kernel: int = 3
    conv_adapter: bool = False
    adapters: bool = True
    temperature: float = 0.07
    score: str = "cls"
    map: str = "prob"
    smoothing_sigma: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.taps, str):
            _choice("taps", self.taps, TAP_PRESETS)
        elif not (hasattr(self.taps, "__iter__") and all(_is_int(t) for t in self.taps)):
            raise HeadError(
                f"FEClipConfig.taps={self.taps!r}: expected a preset name or a list of block indices"
            )
        else:
            self.taps = list(self.taps)
        self.ffe_window = check_window(list(self.ffe_window), "FEClipConfig.ffe_window")
        self.lfs_window = check_window(list(self.lfs_window), "FEClipConfig.lfs_window")
        _choice("freq", self.freq, TRANSFORMS)
        _choice("lfs_statistic", self.lfs_statistic, LFS_STATISTICS)
        _choice("score", self.score, SCORES)
        _choice("map", self.map, MAPS)
        for name, ok, expected in (
            ("n_taps", _is_int(self.n_taps) and self.n_taps >= 1, "a positive integer"),
            ("lam", _is_number(self.lam) and 0.0 <= self.lam <= 1.0, "a number in [0, 1]"),
            ("lfs_kernel", _is_int(self.lfs_kernel) and self.lfs_kernel >= 1, "a positive integer"),
            ("temperature", _is_number(self.temperature) and self.temperature > 0, "a positive number"),
            (
                "smoothing_sigma",
                _is_number(self.smoothing_sigma) and self.smoothing_sigma >= 0,
                "a number >= 0",
            ),
        ):
            if not ok:
                raise HeadError(f"FEClipConfig.{name}={getattr(self, name)!r}: expected {expected}")


def resolve_taps(taps: str | list[int], n_taps: int, num_blocks: int) -> list[int]:
    """The 0-based tap blocks for a preset name or an explicit list (see the module docstring)."""
    L = num_blocks
    if isinstance(taps, str):
        if taps in ("groups", "linspace") and n_taps > L:
            raise HeadError(f"FEClipConfig.n_taps={n_taps}: taps={taps!r} needs n_taps <= {L} blocks")
        if taps == "groups":
            return [(i + 1) * L // n_taps - 1 for i in range(n_taps)]
        if taps == "last4":
            return list(range(max(L - 4, 0), L))
        if taps == "spread3":
            return sorted({5 * L // 8, 6 * L // 8, 7 * L // 8, L - 1})
        if taps == "linspace":
            return (
                [L - 1]
                if n_taps == 1
                else [math.floor(i * (L - 1) / (n_taps - 1) + 0.5) for i in range(n_taps)]
            )
        _choice("taps", taps, TAP_PRESETS)
    taps = list(taps)
    valid = (
        taps and all(0 <= t < L for t in taps) and all(a < b for a, b in zip(taps, taps[1:], strict=False))
    )
    if not valid:
        raise HeadError(
            f"FEClipConfig.taps={taps}: expected a non-empty, strictly increasing list of block indices "
            f"in [0, {L - 1}]"
        )
    return taps


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """maps: (B, h, w) -> (B, h, w) blurred by a separable Gaussian of std `sigma` pixels (edge padding)."""
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32, device=maps.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    with torch.autocast(maps.device.type, enabled=False):
        out = F.pad(maps.float()[:, None], (radius, radius, radius, radius), mode="replicate")
        out = F.conv2d(out, kernel.view(1, 1, 1, -1))
        return F.conv2d(out, kernel.view(1, 1, -1, 1))[:, 0]


def build_tap_adapter(cfg: FEClipConfig, width: int) -> TapAdapter:
    """One tap's fusion module: FFE and/or LFS (or the Conv ablation) per `cfg`."""
    if cfg.conv_adapter:
        branches = {"conv": ConvAdapter(width, cfg.lfs_kernel)}
    else:
        branches = {}
        if cfg.ffe:
            branches["ffe"] = FFE(width, cfg.ffe_window, cfg.freq)
        if cfg.lfs:
            branches["lfs"] = LFS(width, cfg.lfs_window, cfg.lfs_statistic, cfg.lfs_kernel, cfg.freq)
    return TapAdapter(branches, cfg.lam)


@dataclass
class FEClipOutput:
    score: torch.Tensor  # (B,) image anomaly score
    map: torch.Tensor  # (B, h, w) anomaly map at the input size (smoothed when smoothing_sigma > 0)
    tap_scores: torch.Tensor  # (T, B) class-token abnormal probability per tap
    tap_maps: torch.Tensor  # (T, B, h, w) per-tap maps (units: map_kind), before smoothing
    patch_features: list[torch.Tensor]  # T x (B, gh, gw, D) fused patch tokens at each tap
    cls_embedding: torch.Tensor  # (B, E) final image embedding (= encode_image when the adapters are off)
    map_kind: str = field(
        default="prob"
    )  # "prob" (abnormal probability) | "logit_margin" ((cos_a - cos_n) / tau)


class FEClip(nn.Module):
    """Frozen backbone + per-tap adapters + shared patch head `fc`; text_features: (2, E) normal, abnormal."""

    def __init__(
        self,
        backbone: ClipBackbone,
        cfg: FEClipConfig,
        text_features: torch.Tensor,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        if tuple(text_features.shape) != (2, backbone.embed_dim):
            raise HeadError(
                f"text_features of shape {tuple(text_features.shape)}, expected (2, {backbone.embed_dim}) "
                "[normal, abnormal]"
            )
        self.backbone = backbone
        self.cfg = cfg
        self.taps = resolve_taps(cfg.taps, cfg.n_taps, backbone.num_blocks)
        self.register_buffer("text_features", text_features.detach().float().clone())
        width = backbone.width
        self.adapters = nn.ModuleList(
            [build_tap_adapter(cfg, width) for _ in self.taps] if cfg.adapters else []
        )
        self.fc = None
        if cfg.adapters:
            self.fc = nn.Linear(width, backbone.embed_dim, bias=False)
            with torch.no_grad():
                self.fc.weight.copy_(backbone.visual.proj.detach().T)
        # the input (h, w) the head was first run at (training size); recorded in checkpoints
        self.input_size = None if input_size is None else tuple(int(v) for v in input_size)

    def param_groups(self, lr: float, fc_lr_mult: float) -> list[dict]:
        """Optimiser groups: adapters at `lr`, fc at `lr * fc_lr_mult`; empty groups left out."""
        groups = []
        adapter_params = list(self.adapters.parameters())
        if adapter_params:
            groups.append({"name": "adapters", "params": adapter_params, "lr": lr})
        if self.fc is not None:
            groups.append({"name": "fc", "params": list(self.fc.parameters()), "lr": lr * fc_lr_mult})
        return groups

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The learnable state only (adapters + fc), detached."""
        return {k: v.detach() for k, v in self.state_dict().items() if k.startswith(TRAINABLE_PREFIXES)}

    def pre_tap_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, h, w) -> tokens (B, 1 + gh*gw, D) after the first tap block, before its adapter."""
        return self.backbone.run_blocks(self.backbone.embed(images), 0, self.taps[0] + 1)

    def forward(self, images: torch.Tensor) -> FEClipOutput:
        """images: (B, 3, h, w) normalised -> FEClipOutput with maps at (h, w)."""
        return self.forward_from_tokens(self.pre_tap_tokens(images), tuple(images.shape[-2:]))

    def forward_from_tokens(self, tokens: torch.Tensor, image_size) -> FEClipOutput:
        """tokens: (B, 1 + gh * gw, D) from `pre_tap_tokens` of (B, 3, h, w) inputs; image_size: (h, w)."""
        image_size = tuple(int(v) for v in image_size)
        gh, gw = self.backbone.grid_size(image_size)
        expected = (1 + gh * gw, self.backbone.width)
        if tokens.ndim != 3 or tuple(tokens.shape[1:]) != expected:
            raise HeadError(
                f"tokens of shape {tuple(tokens.shape)}, expected (B, {expected[0]}, {expected[1]})"
            )
        if self.input_size is None:
            self.input_size = image_size
        scores, maps, features = [], [], []
        for i, tap in enumerate(self.taps):
            if i > 0:
                tokens = self.backbone.run_blocks(tokens, self.taps[i - 1] + 1, tap + 1)
            tokens, grid = self._fuse(i, tokens, gh, gw)
            score, amap = self._tap_heads(tokens[:, 0], grid, image_size)
            scores.append(score)
            maps.append(amap)
            features.append(grid)
        tokens = self.backbone.run_blocks(tokens, self.taps[-1] + 1, self.backbone.num_blocks)
        return self._aggregate(
            torch.stack(scores), torch.stack(maps), features, self.backbone.project(tokens[:, 0])
        )

    def _fuse(self, index: int, tokens: torch.Tensor, gh: int, gw: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Tap `index`'s adapter on the patch tokens -> (tokens with fused patches, grid (B, gh, gw, D))."""
        grid = tokens[:, 1:].reshape(tokens.shape[0], gh, gw, -1)
        if not self.cfg.adapters:
            return tokens, grid
        grid = self.adapters[index](grid)
        patches = grid.reshape(tokens.shape[0], gh * gw, -1).to(tokens.dtype)
        return torch.cat([tokens[:, :1], patches], dim=1), grid

    def _logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(..., E) -> (..., 2) cosine similarities to [normal, abnormal] over tau, float32."""
        with torch.autocast(embeddings.device.type, enabled=False):
            emb = F.normalize(embeddings.float(), dim=-1)
            return emb @ F.normalize(self.text_features.float(), dim=-1).T / self.cfg.temperature

    def _tap_heads(
        self, cls: torch.Tensor, grid: torch.Tensor, image_size
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cls: (B, D), grid: (B, gh, gw, D) -> score (B,), map (B, h, w) of one tap."""
        score = self._logits(self.backbone.project(cls)).softmax(-1)[:, 1]
        patch_emb = (
            self.backbone.project(grid) if self.fc is None else self.fc(self.backbone.visual.ln_post(grid))
        )
        logits = self._logits(patch_emb)
        amap = logits.softmax(-1)[..., 1] if self.cfg.map == "prob" else logits[..., 1] - logits[..., 0]
        with torch.autocast(amap.device.type, enabled=False):
            amap = F.interpolate(amap[:, None], size=image_size, mode="bilinear", align_corners=False)[:, 0]
        return score, amap

    def _aggregate(self, tap_scores, tap_maps, features, cls_embedding) -> FEClipOutput:
        amap = tap_maps.mean(0)
        if self.cfg.smoothing_sigma > 0:
            amap = gaussian_smooth(amap, self.cfg.smoothing_sigma)
        score = tap_scores.mean(0)
        if self.cfg.score == "cls+max_map":
            score = score + amap.flatten(1).amax(1)
        return FEClipOutput(score, amap, tap_scores, tap_maps, features, cls_embedding, self.cfg.map)
