"""FE-CLIP behind the method interface: adapters trained on the auxiliary source, few-shot banks added.

With reference banks (paper §4.6; docs/method.md §11): final map = FE-CLIP map + weight_map *
bilinear(few-shot map), final score = FE-CLIP score + weight_score * max(few-shot map) (the max on the token
grid), where the few-shot map is the mean over taps of 1 - max cosine similarity of the fused patch tokens to
the bank.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import open_clip
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file

from feclip.identity import Reads
from feclip.methods.base import Method
from feclip.methods.feclip.train import TrainConfig, forward_frozen, train
from feclip.model.backbone import ClipBackbone, backbone_config, patch_grid
from feclip.model.build import build_feclip, feclip_config, load_config
from feclip.model.checkpoint import load_checkpoint, read_description, read_extra, save_checkpoint
from feclip.model.feclip import FEClip, FEClipConfig, FEClipOutput, resolve_taps

BACKBONE_WEIGHTS = "backbone.safetensors"
PRE_TAP_VERSION = 2  # bump when FEClip.pre_tap_tokens / ClipBackbone.embed change what they compute


def add_fewshot(
    out: FEClipOutput, fewshot_map: torch.Tensor, *, weight_map: float = 1.0, weight_score: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """fewshot_map: (B, gh, gw) -> (score (B,), map (B, h, w)) by the paper's rule (module docstring)."""
    feclip_map = out.map.float()
    fewshot_map = fewshot_map.float().to(feclip_map.device)
    up = F.interpolate(fewshot_map[:, None], size=feclip_map.shape[-2:], mode="bilinear", align_corners=False)
    score = out.score.float() + weight_score * fewshot_map.flatten(1).amax(dim=1)
    return score, feclip_map + weight_map * up[:, 0]


class FEClipMethod(Method):
    name: ClassVar[str] = "feclip"
    caches_frozen: ClassVar[bool] = True
    # the CLIP backbone, head, adapters, prompts, training source and loop, few-shot weights; named by freq
    reads: ClassVar[Reads] = Reads(
        ("method", "backbone", "model", "freq", "prompt", "aux", "train", "fewshot"), headline=("freq",)
    )

    def __init__(
        self,
        model: FEClip,
        *,
        train_cfg: TrainConfig,
        seed: int,
        weight_map: float = 1.0,
        weight_score: float = 1.0,
    ) -> None:
        self.model, self.train_cfg, self.seed = model, train_cfg, seed
        self.weight_map, self.weight_score = weight_map, weight_score
        self.transfer: list[
            str
        ] = []  # identity differences of a checkpoint loaded with checkpoint_strict=false
        self._frozen_key: str | None = None

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        """The backbone name, the taps against its block count and the input size against its patch size
        (whole patches only), read from the open_clip model config (no model is built)."""
        vision = backbone_config(cfg.backbone.name)["vision_cfg"]
        resolve_taps(feclip_config(cfg).taps, cfg.model.n_taps, vision["layers"])
        patch_grid(cfg.backbone.input_size, vision["patch_size"], cfg.backbone.name, "backbone.input_size")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> FEClipMethod:
        """The model of the backbone/model/freq/prompt groups, with `model.checkpoint`'s adapters loaded."""
        model = build_feclip(cfg)
        load = load_config(cfg)
        transfer = []
        if load.checkpoint:
            loaded = load_checkpoint(
                load.checkpoint, model, input_size=model.input_size, strict=load.checkpoint_strict
            )
            transfer = loaded.get("transfer", [])
        train_cfg = TrainConfig(
            **{k: v for k, v in cfg.train.items() if k in TrainConfig.__dataclass_fields__}
        )
        method = cls(
            model,
            train_cfg=train_cfg,
            seed=cfg.seed,
            weight_map=cfg.fewshot.weight_map,
            weight_score=cfg.fewshot.weight_score,
        )
        method.transfer = transfer
        return method

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.model.backbone.mean, self.model.backbone.std

    def tags(self) -> dict[str, str]:
        return {"feclip.checkpoint_transfer": "; ".join(self.transfer)} if self.transfer else {}

    @property
    def input_size(self) -> tuple[int, int]:
        return self.model.input_size

    @property
    def random_init(self) -> bool:
        return self.model.backbone.pretrained is None

    def fit(self, *, normals=None, aux=None, rt=None, frozen=None, log_epoch=None) -> dict[str, list[float]]:
        """Train the adapters + fc on `aux` (nothing to do without a source or with train.epochs = 0)."""
        if aux is None or self.train_cfg.epochs == 0:
            return {}
        tokens = frozen(aux) if frozen is not None else None
        return train(self.model, aux, self.train_cfg, rt, seed=self.seed, tokens=tokens, log_epoch=log_epoch)

    def frozen_key(self) -> str:
        """The backbone's full identity (model name, open_clip config, activation, weights: hashed once per
        job), the first tap (where the frozen tokens end) and the version of the pre-tap code."""
        if self._frozen_key is None:
            backbone = self.model.backbone
            identity = {
                "model": backbone.model_name,
                "config": open_clip.get_model_config(backbone.model_name),
                "activation": type(backbone.visual.transformer.resblocks[0].mlp.gelu).__name__,
                "weights": backbone.fingerprint,
                "first_tap": self.model.taps[0],
                "code": PRE_TAP_VERSION,
            }
            self._frozen_key = json.dumps(identity, sort_keys=True, default=str)
        return self._frozen_key

    def frozen(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.pre_tap_tokens(inputs)

    def forward(self, inputs=None, *, frozen=None) -> FEClipOutput:
        """inputs (B, 3, h, w), or their pre-tap tokens (`feclip.cache.Frozen`); inference: the tap maps'
        mean is upsampled once (no per-tap maps)."""
        if frozen is None:
            return self.model(inputs, per_tap_maps=False)
        return forward_frozen(self.model, frozen, per_tap_maps=False)

    def with_references(self, out: FEClipOutput, terms: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return add_fewshot(out, terms["distance"], weight_map=self.weight_map, weight_score=self.weight_score)

    def save(self, directory: Path) -> None:
        """Adapters + fc and the description (`feclip.model.checkpoint`), the text features, the few-shot
        weights, and the backbone weights when they are a random init (nothing else can rebuild them)."""
        extra = {
            "text_features": self.model.text_features,
            "fewshot": {"weight_map": self.weight_map, "weight_score": self.weight_score},
        }
        save_checkpoint(directory, self.model, extra=extra)
        if self.random_init:
            weights = {k: v.contiguous().cpu() for k, v in self.model.backbone.state_dict().items()}
            save_file(weights, Path(directory) / BACKBONE_WEIGHTS)

    @classmethod
    def load(cls, directory: Path, *, weights: str | None = None) -> FEClipMethod:
        """The method saved in `directory` (also format-1 checkpoints, whose text features sit in
        predictor.json); `weights`: the backbone weights file's place now (its fingerprint is checked)."""
        directory = Path(directory)
        description = read_description(directory)
        pretrained = weights or description["pretrained"]
        backbone = ClipBackbone(description["backbone"], pretrained, description.get("activation", "auto"))
        if description["pretrained"] is None:
            backbone.load_state_dict(load_file(directory / BACKBONE_WEIGHTS))
        extra = read_extra(directory, description)
        text = extra.get("text_features")
        if text is None:
            text = torch.tensor(json.loads((directory / "predictor.json").read_text())["text_features"])
        model = FEClip(backbone, FEClipConfig(**description["config"]), text, description["input_size"])
        load_checkpoint(directory, model)
        weights = extra.get("fewshot", {})
        return cls(model, train_cfg=TrainConfig(epochs=0), seed=0, **weights)
