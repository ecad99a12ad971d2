"""WinCLIP behind the method interface (feclip/conf/method/winclip.yaml): zero-shot, WinCLIP+ few-shot, and
the condition-aware variant, on the `backbone` group's CLIP (the user's: `backbone=vit_b16_plus_240`) with the
`prompt` group's ensemble (`prompt=winclip` or the user's class names, e.g. `prompt=hdmap_sensor`).

- Zero-shot: image score and map of `WinClip.zero_shot` (harmonic aggregation of window scores).
- WinCLIP+ and condition-aware WinCLIP: the reference banks (`feclip.condition`; `fewshot.k > 0`) hold the
  patch embeddings and the window embeddings of each scale as feature levels; per level the association is
  (1 - max cosine) / 2 against the selected bank, windows are aggregated harmonically to patches, the mean
  over levels is the few-shot map; final map = (zero-shot + few-shot) / 2, score = (zero-shot score + max
  few-shot) / 2 (anomalib's WinCLIP+). `method.visual_only=true` scores by the few-shot map alone (the
  user's CA-WinCLIP protocol: score = its max).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from feclip.identity import Reads
from feclip.methods.base import Method, MethodOutput
from feclip.methods.winclip.model import WinClip, WinClipError, harmonic_aggregation
from feclip.model.backbone import ClipBackbone, backbone_config, patch_grid
from feclip.model.build import build_backbone, prompt_lists
from feclip.model.prompts import text_features

DESCRIPTION_FILE = "winclip.json"
STATE_FILE = "winclip.safetensors"  # text features (+ the backbone's weights when they are a random init)


@dataclass(kw_only=True)
class WinClipOutput(MethodOutput):
    """features: [patch grid (B, gh, gw, D), window grids per scale (B, nh, nw, E)]; grid_map: the
    zero-shot map on the patch grid (B, gh, gw), what references are combined with."""

    grid_map: torch.Tensor


class WinClipMethod(Method):
    name: ClassVar[str] = "winclip"
    # the CLIP backbone, the prompt ensemble and its own settings; never adapters, training or its source
    reads: ClassVar[Reads] = Reads(("method", "backbone", "prompt"), headline=("prompt",))

    def __init__(self, model: WinClip, *, settings: dict, input_size: tuple[int, int]) -> None:
        self.model, self.settings, self.size = model, settings, tuple(input_size)

    @classmethod
    def validate(cls, cfg: DictConfig) -> None:
        """The backbone name and the input size against its patch size (whole patches only)."""
        patch = backbone_config(cfg.backbone.name)["vision_cfg"]["patch_size"]
        patch_grid(cfg.backbone.input_size, patch, cfg.backbone.name, "backbone.input_size")

    @classmethod
    def from_config(cls, cfg: DictConfig) -> WinClipMethod:
        backbone = build_backbone(cfg)
        text = text_features(backbone, *prompt_lists(cfg.prompt), average=cfg.prompt.average)
        settings = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k != "name"}
        return cls(
            cls._build(backbone, text, settings), settings=settings, input_size=cfg.backbone.input_size
        )

    @staticmethod
    def _build(backbone: ClipBackbone, text: torch.Tensor, settings: dict) -> WinClip:
        return WinClip(
            backbone,
            text,
            scales=tuple(settings["scales"]),
            temperature=settings["temperature"],
            project_patches=settings["project_patches"],
            window_batch=settings["window_batch"],
        )

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return self.model.backbone.mean, self.model.backbone.std

    @property
    def input_size(self) -> tuple[int, int]:
        return self.size

    @property
    def random_init(self) -> bool:
        return self.model.backbone.pretrained is None

    def forward(self, inputs=None, *, frozen=None) -> WinClipOutput:
        embeddings = self.model.encode(inputs)
        score, grid_map = self.model.zero_shot(embeddings)
        return WinClipOutput(
            score=score,
            map=self._upsample(grid_map),
            features=[embeddings.patches, *embeddings.windows],
            embedding=embeddings.image,
            grid_map=grid_map,
        )

    def _upsample(self, grid_map: torch.Tensor) -> torch.Tensor:
        return F.interpolate(grid_map[:, None], size=self.size, mode="bilinear")[:, 0]

    def reference_terms(self, out: WinClipOutput, bank, bank_name: str, rows: torch.Tensor) -> dict:
        """The few-shot map (b, gh, gw) of `rows` against one bank: associations per level, aggregated."""
        matches = bank.nearest([level[rows] for level in out.features], bank_name)
        grid = tuple(out.features[0].shape[1:3])
        maps = [matches[0][0].clamp_min(0) / 2]
        for (distance, _), scale in zip(matches[1:], self.model.scales, strict=True):
            maps.append(harmonic_aggregation(distance.clamp_min(0) / 2, grid, scale))
        return {"fewshot": self.model.few_shot_map(maps)}

    def with_references(self, out: WinClipOutput, terms: dict) -> tuple[torch.Tensor, torch.Tensor]:
        few_shot = terms["fewshot"].float()
        if self.settings["visual_only"]:
            return few_shot.amax((-2, -1)), self._upsample(few_shot)
        grid_map = (out.grid_map.float() + few_shot) / 2
        return (out.score.float() + few_shot.amax((-2, -1))) / 2, self._upsample(grid_map)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        backbone = self.model.backbone
        description = {
            "method": self.name,
            "settings": self.settings,
            "input_size": list(self.size),
            "backbone": backbone.model_name,
            "pretrained": backbone.pretrained,
            "activation": backbone.activation,
            "backbone_weights": backbone.fingerprint,
        }
        (directory / DESCRIPTION_FILE).write_text(json.dumps(description, indent=2))
        state = {"text_features": self.model.text_features.contiguous().cpu()}
        if self.random_init:
            state |= {f"backbone.{k}": v.contiguous().cpu() for k, v in backbone.state_dict().items()}
        save_file(state, directory / STATE_FILE)

    @classmethod
    def load(cls, directory: Path, *, weights: str | None = None) -> WinClipMethod:
        """The method saved in `directory`; `weights`: the backbone weights file's place now."""
        description = json.loads((Path(directory) / DESCRIPTION_FILE).read_text())
        state = load_file(Path(directory) / STATE_FILE)
        pretrained = weights or description["pretrained"]
        backbone = ClipBackbone(description["backbone"], pretrained, description.get("activation", "auto"))
        weights = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        if weights:
            backbone.load_state_dict(weights)
        if backbone.fingerprint != description["backbone_weights"]:
            raise WinClipError(
                f"{directory}: backbone {description['backbone']} ({description['pretrained']}) has other "
                f"weights here ({backbone.fingerprint}) than when the model was saved "
                f"({description['backbone_weights']}); expected the same weights"
            )
        model = cls._build(backbone, state["text_features"], description["settings"])
        return cls(model, settings=description["settings"], input_size=description["input_size"])
