"""The FE-CLIP model: frozen CLIP ViT + frequency adapters at tap blocks + per-tap scores and anomaly maps.

At every tap block n (0-based index into the ViT's blocks), after the block ran:
  f_hat = lam * (FFE(f) + LFS(f)) + (1 - lam) * f     on the patch tokens f only (class token untouched);
f_hat replaces the patch tokens in the stream entering block n + 1. Per tap, with ln_post before both heads:
  score_n = softmax(cos(proj_clip(cls), g) / tau)[abnormal]      (CLIP's frozen projection)
  map_n   = softmax(cos(fc(f_hat), g) / tau)[abnormal] per patch (or the logit margin), bilinear to (h, w)
with g = text features [normal, abnormal] and fc ONE learnable Linear(D, E) shared by all taps: the paper's
plain Linear (default init, with bias: `fc_init='random'`, `fc_bias=True`, the default), or initialised from
CLIP's projection without bias (`fc_init='clip_projection'`, `fc_bias=False`: an untrained fc then reproduces
CLIP's own patch projection; feclip/conf/model/fc_clip_init.yaml). The outputs are the means
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
the rest; forward(x) == forward_from_tokens(pre_tap_tokens(x), x.shape[-2:], token_grid=...). Head math
(cosines, softmax, maps) and the adapters run in float32 with autocast off; the frozen blocks follow the
caller's autocast.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from feclip.errors import FeclipError
from feclip.methods.base import MethodOutput
from feclip.model.adapters import FFE, LFS, LFS_STATISTICS, ConvAdapter, TapAdapter
from feclip.model.backbone import ClipBackbone
from feclip.model.frequency import TRANSFORMS, check_window
from feclip.precision import float32
from feclip.registry import Registry, choices
from feclip.runtime import cached_constants

TAP_PRESETS = Registry("tap preset", key="model.taps")
SCORES = choices("image score", "model.score", ("cls", "cls+max_map"))
FC_INITS = choices("fc initialisation", "model.fc_init", ("random", "clip_projection"))
MAPS = choices("anomaly map", "model.map", ("prob", "logit_margin"))
TRAINABLE_PREFIXES = ("adapters.", "fc.")


class HeadError(FeclipError):
    """An FE-CLIP option, tap list or input is invalid."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(name: str, ok: bool, value, expected: str) -> None:
    if not ok:
        raise HeadError(f"{name}={value!r}: expected {expected}")


@dataclass
class FFEConfig:
    """The `freq.ffe` group: FFE on non-overlapping (Ph, Pw) windows of the patch grid."""

    enabled: bool = True
    window: tuple[int, int] = (3, 3)

    def __post_init__(self) -> None:
        self.window = check_window(list(self.window), "freq.ffe.window")


@dataclass
class LFSConfig:
    """The `freq.lfs` group: LFS on stride-1 (Qh, Qw) windows, one statistic, then Conv(kernel) + GELU."""

    enabled: bool = True
    window: tuple[int, int] = (3, 3)
    statistic: str = "mean"
    kernel: int = 3

    def __post_init__(self) -> None:
        self.window = check_window(list(self.window), "freq.lfs.window")
        LFS_STATISTICS.get_entry(self.statistic)
        _check(
            "freq.lfs.kernel", _is_int(self.kernel) and self.kernel >= 1, self.kernel, "a positive integer"
        )


@dataclass
class FreqConfig:
    """The `freq` group: the window transform of both adapters, the adapters, or the Conv ablation."""

    transform: str = "dct"
    conv_adapter: bool = False
    ffe: FFEConfig = field(default_factory=FFEConfig)
    lfs: LFSConfig = field(default_factory=LFSConfig)

    def __post_init__(self) -> None:
        TRANSFORMS.get_entry(self.transform)
        self.ffe = self.ffe if isinstance(self.ffe, FFEConfig) else FFEConfig(**self.ffe)
        self.lfs = self.lfs if isinstance(self.lfs, LFSConfig) else LFSConfig(**self.lfs)


@dataclass
class FEClipConfig:
    """The `model` group's head options (defaults and why: docs/method.md §12, "Open choices") and the
    `freq` group nested: FEClipConfig(**model_head, freq=FreqConfig(**freq)). `taps` may be a list."""

    taps: str | list[int] = "groups"
    n_taps: int = 4
    lam: float = 0.1
    adapters: bool = True
    temperature: float = 0.07
    score: str = "cls"
    map: str = "prob"
    smoothing_sigma: float = 0.0
    fc_init: str = "random"
    fc_bias: bool = True
    freq: FreqConfig = field(default_factory=FreqConfig)

    def __post_init__(self) -> None:
        if isinstance(self.taps, str):
            TAP_PRESETS.get_entry(self.taps)
        elif not (hasattr(self.taps, "__iter__") and all(_is_int(t) for t in self.taps)):
            raise HeadError(f"model.taps={self.taps!r}: expected a preset name or a list of block indices")
        else:
            self.taps = list(self.taps)
        self.freq = self.freq if isinstance(self.freq, FreqConfig) else FreqConfig(**self.freq)
        SCORES.get_entry(self.score)
        MAPS.get_entry(self.map)
        FC_INITS.get_entry(self.fc_init)
        if self.score == "cls+max_map" and self.map == "logit_margin":
            raise HeadError(
                "model.score='cls+max_map' with model.map='logit_margin' adds a logit margin (about +-1/tau) "
                "to a probability in [0, 1]; expected model.map=prob with cls+max_map, or model.score=cls"
            )
        _check("model.n_taps", _is_int(self.n_taps) and self.n_taps >= 1, self.n_taps, "a positive integer")
        _check("model.lam", _is_number(self.lam) and 0.0 <= self.lam <= 1.0, self.lam, "a number in [0, 1]")
        _check(
            "model.temperature",
            _is_number(self.temperature) and self.temperature > 0,
            self.temperature,
            "a positive number",
        )
        _check(
            "model.smoothing_sigma",
            _is_number(self.smoothing_sigma) and self.smoothing_sigma >= 0,
            self.smoothing_sigma,
            "a number >= 0",
        )

    def to_dict(self) -> dict:
        """JSON-able nested dict; FEClipConfig(**to_dict()) rebuilds it."""
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@TAP_PRESETS.register("groups")
def _groups(num_blocks: int, n_taps: int) -> list[int]:
    """End of each of n_taps equal layer groups (the paper's figure; the default)."""
    _enough_blocks("groups", num_blocks, n_taps)
    return [(i + 1) * num_blocks // n_taps - 1 for i in range(n_taps)]


@TAP_PRESETS.register("last4")
def _last4(num_blocks: int, n_taps: int) -> list[int]:
    """The last four blocks (n_taps ignored)."""
    return list(range(max(num_blocks - 4, 0), num_blocks))


@TAP_PRESETS.register("spread3")
def _spread3(num_blocks: int, n_taps: int) -> list[int]:
    """floor(5L/8), floor(6L/8), floor(7L/8) and L - 1, duplicates dropped (n_taps ignored)."""
    L = num_blocks
    return sorted({5 * L // 8, 6 * L // 8, 7 * L // 8, L - 1})


@TAP_PRESETS.register("linspace")
def _linspace(num_blocks: int, n_taps: int) -> list[int]:
    """n_taps evenly spaced from 0 to L - 1, rounded half up."""
    _enough_blocks("linspace", num_blocks, n_taps)
    if n_taps == 1:
        return [num_blocks - 1]
    return [math.floor(i * (num_blocks - 1) / (n_taps - 1) + 0.5) for i in range(n_taps)]


def _enough_blocks(preset: str, num_blocks: int, n_taps: int) -> None:
    if n_taps > num_blocks:
        raise HeadError(f"model.n_taps={n_taps}: taps={preset!r} needs n_taps <= {num_blocks} blocks")


def resolve_taps(taps: str | list[int], n_taps: int, num_blocks: int) -> list[int]:
    """The 0-based tap blocks for a preset name (TAP_PRESETS) or an explicit list (module docstring)."""
    if isinstance(taps, str):
        return TAP_PRESETS.get_entry(taps)(num_blocks, n_taps)
    taps = list(taps)
    valid = (
        taps and all(0 <= t < num_blocks for t in taps) and all(a < b for a, b in itertools.pairwise(taps))
    )
    if not valid:
        raise HeadError(
            f"model.taps={taps}: expected a non-empty, strictly increasing list of block indices "
            f"in [0, {num_blocks - 1}]"
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
    freq = cfg.freq
    if freq.conv_adapter:
        branches = {"conv": ConvAdapter(width, freq.lfs.kernel)}
    else:
        branches = {}
        if freq.ffe.enabled:
            branches["ffe"] = FFE(width, freq.ffe.window, freq.transform)
        if freq.lfs.enabled:
            lfs = freq.lfs
            branches["lfs"] = LFS(width, lfs.window, lfs.statistic, lfs.kernel, freq.transform)
    return TapAdapter(branches, cfg.lam)


@cached_constants()
def bilinear_matrix(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """(n_out, n_in) float32: one axis of `F.interpolate(mode='bilinear', align_corners=False)` as a matrix,
    column j = the interpolated unit vector e_j (derived from F.interpolate itself, not re-derived)."""
    eye = torch.eye(n_in, device=device)[None, None]
    return F.interpolate(eye, size=(n_out, n_in), mode="bilinear", align_corners=False)[0, 0]


def upsample(maps: torch.Tensor, size) -> torch.Tensor:
    """maps: (N, gh, gw) patch-resolution maps -> (N, h, w), bilinear (align_corners=False), in float32 (also
    under autocast). Computed as A_h @ maps @ A_w^T (`bilinear_matrix`): the same numbers as F.interpolate
    within float rounding, and a backward of two matmuls (5x faster than interpolate's on CPU)."""
    h, w = size
    with torch.autocast(maps.device.type, enabled=False):
        rows = bilinear_matrix(maps.shape[-2], int(h), maps.device)
        cols = bilinear_matrix(maps.shape[-1], int(w), maps.device)
        return rows @ maps.float() @ cols.T


@dataclass(kw_only=True)
class FEClipOutput(MethodOutput):
    """score (B,) image anomaly score; map (B, h, w) at the input size (smoothed when smoothing_sigma > 0);
    features: T x (B, gh, gw, D) fused patch tokens at each tap; embedding (B, E) final image embedding
    (= encode_image when the adapters are off); plus the per-tap outputs the training loss needs."""

    tap_scores: torch.Tensor  # (T, B) class-token abnormal probability per tap
    tap_maps: torch.Tensor | None  # (T, B, h, w) per-tap maps (units: map_kind), before smoothing; None at
    # inference (`per_tap_maps=False`: the mean of the patch grids is upsampled once, the same map)
    map_kind: str = "prob"  # "prob" (abnormal probability) | "logit_margin" ((cos_a - cos_n) / tau)


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
            self.fc = nn.Linear(width, backbone.embed_dim, bias=cfg.fc_bias)
            if cfg.fc_init == "clip_projection":
                with torch.no_grad():
                    self.fc.weight.copy_(backbone.visual.proj.detach().T)
                    if self.fc.bias is not None:
                        self.fc.bias.zero_()
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

    def forward(self, images: torch.Tensor, *, per_tap_maps: bool = True) -> FEClipOutput:
        """images: (B, 3, h, w) normalised -> FEClipOutput with maps at (h, w)."""
        size = tuple(images.shape[-2:])
        return self.forward_from_tokens(
            self.pre_tap_tokens(images),
            size,
            token_grid=self.backbone.grid_size(size),
            per_tap_maps=per_tap_maps,
        )

    def forward_from_tokens(
        self, tokens: torch.Tensor, image_size, *, token_grid, per_tap_maps: bool = True
    ) -> FEClipOutput:
        """tokens: (B, 1 + gh * gw, D) from `pre_tap_tokens` of inputs whose patch grid was `token_grid`
        (gh, gw); image_size: (h, w) of those inputs (the maps' size). The grid is checked, not only the
        token count: tokens of a 64x192 input (4 x 12) are refused as 96x128 (6 x 8).

        `per_tap_maps`: upsample every tap's map (the training loss needs them); False upsamples only their
        mean (bilinear resizing is linear: the same map, T times fewer interpolations) and leaves
        `tap_maps` None."""
        image_size = tuple(int(v) for v in image_size)
        gh, gw = self.backbone.grid_size(image_size)
        if tuple(token_grid) != (gh, gw):
            raise HeadError(
                f"tokens on a {tuple(token_grid)} patch grid, but image size {image_size} has a {(gh, gw)} "
                "grid; expected the size the tokens were computed at"
            )
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
            score, amap = self._tap_heads(tokens[:, 0], grid)
            scores.append(score)
            maps.append(amap)
            features.append(grid)
        tokens = self.backbone.run_blocks(tokens, self.taps[-1] + 1, self.backbone.num_blocks)
        grids = torch.stack(maps)  # (T, B, gh, gw)
        tap_maps = (
            upsample(grids.flatten(0, 1), image_size).unflatten(0, grids.shape[:2]) if per_tap_maps else None
        )
        amap = tap_maps.mean(0) if per_tap_maps else upsample(grids.mean(0), image_size)
        return self._aggregate(
            torch.stack(scores), amap, tap_maps, features, self.backbone.project(tokens[:, 0])
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

    @float32
    def _tap_heads(self, cls: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cls: (B, D), grid: (B, gh, gw, D) -> score (B,), map (B, gh, gw) of one tap (patch resolution)."""
        score = self._logits(self.backbone.project(cls)).softmax(-1)[:, 1]
        patch_emb = self.backbone.project(grid) if self.fc is None else self.fc(self.backbone.ln_post(grid))
        logits = self._logits(patch_emb)
        amap = logits.softmax(-1)[..., 1] if self.cfg.map == "prob" else logits[..., 1] - logits[..., 0]
        return score, amap

    def _aggregate(self, tap_scores, amap, tap_maps, features, embedding) -> FEClipOutput:
        """amap: (B, h, w) mean over taps at the input size; tap_maps: (T, B, h, w) or None."""
        if self.cfg.smoothing_sigma > 0:
            amap = gaussian_smooth(amap, self.cfg.smoothing_sigma)
        score = tap_scores.mean(0)
        if self.cfg.score == "cls+max_map":
            score = score + amap.flatten(1).amax(1)
        return FEClipOutput(
            score=score,
            map=amap,
            features=features,
            embedding=embedding,
            tap_scores=tap_scores,
            tap_maps=tap_maps,
            map_kind=self.cfg.map,
        )
