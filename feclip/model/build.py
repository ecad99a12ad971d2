"""Build FE-CLIP from the composed config: the `backbone`, `model`, `freq` and `prompt` groups.

Config keys equal dataclass fields: `FEClipConfig(**model_head, freq=FreqConfig(**freq))`; the `model`
group's two loading keys (`checkpoint`, `checkpoint_strict`) are `LoadConfig`'s fields.

The plain-CLIP rule: a job that trains nothing (`aux=none`) and loads no checkpoint runs CLIP itself
(adapters off, CLIP's own patch projection), the zero-shot baseline; FE-CLIP with untrained adapters would
only add noise. Every other job builds the adapters the `model` group asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from omegaconf import DictConfig, OmegaConf

from feclip.model.backbone import ClipBackbone
from feclip.model.feclip import FEClip, FEClipConfig
from feclip.model.prompts import text_features
from feclip.runtime import seed_everything


@dataclass
class LoadConfig:
    """The `model` group's loading keys: trained adapters from a checkpoint directory (or `runs:/` URI)."""

    checkpoint: str | None = None
    checkpoint_strict: bool = True


LOAD_KEYS = tuple(f.name for f in fields(LoadConfig))


def plain_clip(cfg: DictConfig) -> bool:
    """The plain-CLIP rule (module docstring): nothing is trained and nothing is loaded."""
    return cfg.aux.source == "none" and not cfg.model.checkpoint


def feclip_config(cfg: DictConfig) -> FEClipConfig:
    """FEClipConfig from the `model` (minus LOAD_KEYS) and `freq` groups, with the plain-CLIP rule."""
    head = {k: v for k, v in OmegaConf.to_container(cfg.model).items() if k not in LOAD_KEYS}
    if plain_clip(cfg):
        head["adapters"] = False
    return FEClipConfig(**head, freq=OmegaConf.to_container(cfg.freq))


def load_config(cfg: DictConfig) -> LoadConfig:
    return LoadConfig(**{k: cfg.model[k] for k in LOAD_KEYS})


def prompt_lists(prompt: DictConfig) -> tuple[list[str], list[str], list[str]]:
    """(normal, abnormal, templates) with the class name put into every state phrase."""
    normal = [state.format(prompt.class_name) for state in prompt.normal]
    abnormal = [state.format(prompt.class_name) for state in prompt.abnormal]
    return normal, abnormal, list(prompt.templates)


def build_backbone(cfg: DictConfig) -> ClipBackbone:
    """The frozen open_clip backbone of the `backbone` group (seeded first: random init is reproducible)."""
    seed_everything(cfg.seed)
    return ClipBackbone(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.activation)


def build_feclip(cfg: DictConfig) -> FEClip:
    """Frozen backbone + FE-CLIP head with the prompt set's text features, on the CPU."""
    backbone = build_backbone(cfg)
    text = text_features(backbone, *prompt_lists(cfg.prompt), average=cfg.prompt.average)
    return FEClip(backbone, feclip_config(cfg), text, tuple(cfg.backbone.input_size))
