"""Frozen timm feature extractor for PatchCore: named blocks of a ViT or CNN as one patch-feature grid.

`TimmFeatures(preset)` builds `timm.create_model(PRESETS[preset].model, ...)` and returns, per image, the
outputs of the chosen blocks (`blocks`, e.g. ["blocks.8"] or ["blocks.8", "blocks.11"] for a ViT,
["layer2", "layer3"] for the ResNet) through timm's `forward_intermediates`: ViT tokens come back as a
(D, gh, gw) grid with the class and register tokens dropped, CNN stages as their (C, h, w) maps. The model
is pruned after the last chosen block. `concat_blocks` resizes coarser maps to the finest block's grid
(bilinear) and concatenates channels, as PatchCore does with layer2 + layer3.

Weights (`pretrained`): False = random init (seed the torch RNG first), True = the preset's timm weights
from the HF hub (cached, or downloaded when online), or a local weights file (.safetensors / .pth) loaded
through timm's `pretrained_cfg_overlay=dict(file=...)`. Uncached weights fail at once, on one line, when the
hub is offline (HF_HUB_OFFLINE=1) or unreachable. Frozen (requires_grad False) and always in eval mode.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import nn

from feclip.errors import FeclipError
from feclip.model.backbone import hub_offline, reachable
from feclip.precision import reduced
from feclip.registry import Registry

LOCAL_FILE_HINT = "method.pretrained=/path/to/model.safetensors (timm pretrained_cfg_overlay=dict(file=...))"


@dataclass(frozen=True)
class Preset:
    """A timm model (name.tag), its default feature blocks and extra `timm.create_model` options."""

    model: str
    blocks: tuple[str, ...]
    vit: bool  # token grid; `image_size` sets timm's img_size and any other input size is interpolated
    options: Mapping = field(default_factory=dict)
    has_weights: bool = True  # timm publishes weights for `model` (random-init stand-ins: False)


PRESETS: Registry[Preset] = Registry(
    "PatchCore feature backbone",
    key="method.backbone",
    entries={
        # the user's exp-23 backbone (DINOv2 ViT-S/14, 518 x 518 -> 37 x 37 grid)
        "dinov2_vits14": Preset("vit_small_patch14_dinov2.lvd142m", ("blocks.8",), vit=True),
        "dinov2_vitb14": Preset("vit_base_patch14_dinov2.lvd142m", ("blocks.8",), vit=True),
        # the paper's backbone: torchvision ImageNet weights, layers 2 + 3
        "wide_resnet50_2": Preset("wide_resnet50_2.tv_in1k", ("layer2", "layer3"), vit=False),
        # random-init stand-ins for tests and CPU runs
        "tiny": Preset(
            "vit_small_patch14_dinov2",
            ("blocks.2",),
            vit=True,
            options={"depth": 4, "embed_dim": 64, "num_heads": 2, "patch_size": 16, "img_size": 224},
            has_weights=False,
        ),
        "tiny_resnet": Preset(
            "resnet18", ("layer2", "layer3"), vit=False, options={"layers": (1, 1, 1, 1)}, has_weights=False
        ),
    },
)


class TimmFeaturesError(FeclipError):
    """The timm feature extractor cannot be built or used as asked (preset, blocks, weights, input)."""


def _weights_cached(cfg) -> bool:
    """Whether timm would find the pretrained weights of `cfg` without a download."""
    from huggingface_hub import try_to_load_from_cache

    if cfg.hf_hub_id:
        filename = cfg.hf_hub_filename or "pytorch_model.bin"
        names = {filename, "model.safetensors", filename.removesuffix(".bin") + ".safetensors"}
        return any(isinstance(try_to_load_from_cache(cfg.hf_hub_id, name), str) for name in names)
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(cfg.url or "")
    return bool(cfg.url) and checkpoint.is_file()


def _check_download_possible(preset: str, cfg) -> None:
    from huggingface_hub import constants

    if hub_offline():
        reason = "the hub is offline (HF_HUB_OFFLINE=1)"
    elif not reachable(host := urlparse(constants.ENDPOINT if cfg.hf_hub_id else cfg.url).hostname or ""):
        reason = f"{host or 'the download host'} cannot be reached (no network?)"
    else:
        return
    raise TimmFeaturesError(
        f"feature backbone {preset!r} ({cfg.hf_hub_id or cfg.url}): weights are not cached and {reason}; "
        f"download them once online or pass a local file with {LOCAL_FILE_HINT}"
    )


def create_timm(preset: str, pretrained: bool | str | Path, options: Mapping) -> nn.Module:
    """The preset's timm model with weights `pretrained` (False | True | local file); one-line errors."""
    spec = PRESETS[preset]
    if pretrained is False:
        return timm.create_model(spec.model, pretrained=False, **options)
    if pretrained is True:
        if not spec.has_weights:
            raise TimmFeaturesError(
                f"feature backbone {preset!r} has no published weights: use method.pretrained=false or a "
                "local file"
            )
        cfg = timm.models.get_pretrained_cfg(spec.model)
        if not _weights_cached(cfg):
            _check_download_possible(preset, cfg)
        return _create(
            preset, spec.model, options, f"with no network pass a local file with {LOCAL_FILE_HINT}"
        )
    path = Path(pretrained)
    if not path.is_file():
        raise TimmFeaturesError(
            f"feature backbone {preset!r}: pretrained={str(pretrained)!r} is neither True/False nor an "
            f"existing weights file"
        )
    overlay = {"pretrained_cfg_overlay": {"file": str(path)}}
    hint = f"expected timm weights for {spec.model} (.safetensors or .pth)"
    return _create(preset, spec.model, {**options, **overlay}, hint, source=str(path))


def _create(preset: str, model: str, options: Mapping, hint: str, source: str = "the hub") -> nn.Module:
    try:
        return timm.create_model(model, pretrained=True, **options)
    except (RuntimeError, OSError, KeyError, ValueError, pickle.UnpicklingError, SafetensorError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TimmFeaturesError(
            f"feature backbone {preset!r}: cannot load weights from {source} ({reason}); {hint}"
        ) from error


def concat_blocks(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """maps: per block (B, C_i, h_i, w_i) -> (B, gh, gw, sum C_i) at the finest grid (bilinear resizing)."""
    grid = max((m.shape[-2:] for m in maps), key=lambda size: size[0] * size[1])
    resized = [m if m.shape[-2:] == grid else F.interpolate(m, size=grid, mode="bilinear") for m in maps]
    return torch.cat(resized, dim=1).permute(0, 2, 3, 1)


class TimmFeatures(nn.Module):
    """Frozen timm backbone; forward: images (B, 3, H, W) in [0, 1]-ish -> features (B, gh, gw, D)."""

    def __init__(
        self,
        preset: str,
        *,
        blocks: Sequence[str] | None = None,
        pretrained: bool | str | Path = False,
        image_size: int | tuple[int, int] | None = None,
        normalize: bool = True,
        final_norm: bool = False,
        model_kwargs: Mapping | None = None,
    ) -> None:
        """`image_size` (ViTs only; CNNs take any size): timm's img_size, i.e. the positional-embedding grid
        (518 for DINOv2 = 37 x 37); other sizes are interpolated. `normalize`: subtract/divide by the
        backbone's `mean`/`std` (ImageNet) inside forward. `final_norm` (ViTs): apply the final LayerNorm to
        the block outputs (anomalib's current default); off = raw block outputs, as timm's features_only
        (the user's runs). `model_kwargs`: extra `timm.create_model` options (override the preset's)."""
        super().__init__()
        spec = PRESETS.get_entry(preset)
        options = dict(spec.options)
        if spec.vit:
            options["dynamic_img_size"] = True
            if image_size is not None:
                options["img_size"] = image_size
        options.update(model_kwargs or {})
        self.preset, self.normalize, self.final_norm = preset, normalize, final_norm
        self.pretrained = pretrained if isinstance(pretrained, bool) else str(pretrained)
        self.model = create_timm(preset, pretrained, options)
        self.blocks: tuple[str, ...] = tuple(spec.blocks if blocks is None else blocks)
        self.indices = self._block_indices(self.blocks)
        self.model.prune_intermediate_layers(self.indices, prune_norm=not final_norm, prune_head=True)
        self.model.requires_grad_(False)
        self.model.eval()
        self.dims: tuple[int, ...] = tuple(self.model.feature_info[i]["num_chs"] for i in self.indices)
        self.dim: int = sum(self.dims)
        self.mean: tuple[float, ...] = tuple(self.model.pretrained_cfg["mean"])
        self.std: tuple[float, ...] = tuple(self.model.pretrained_cfg["std"])
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    def _block_indices(self, blocks: tuple[str, ...]) -> list[int]:
        names = [info["module"] for info in self.model.feature_info]
        indices = [names.index(b) if b in names else -1 for b in blocks]
        if not blocks or -1 in indices or indices != sorted(set(indices)):
            raise TimmFeaturesError(
                f"feature blocks {list(blocks)} of {self.preset!r}: expected distinct names in network "
                f"order from {names}"
            )
        return indices

    def train(self, mode: bool = True) -> TimmFeatures:
        """Always eval: the backbone is frozen whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def block_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """images: (B, 3, H, W) -> per chosen block (B, C_i, h_i, w_i) (ViT: prefix tokens dropped)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise TimmFeaturesError(f"images of shape {tuple(images.shape)}, expected (B, 3, H, W)")
        if self.normalize:
            images = (images - self._mean) / self._std
        with reduced("backbone"):
            return self.model.forward_intermediates(
                images, indices=self.indices, norm=self.final_norm, output_fmt="NCHW", intermediates_only=True
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: (B, 3, H, W) -> (B, gh, gw, D) at the finest chosen block's grid, D = sum(self.dims)."""
        return concat_blocks(self.block_maps(images))
