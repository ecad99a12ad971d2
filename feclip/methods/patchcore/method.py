"""PatchCore behind the method interface (feclip/conf/method/patchcore.yaml).

- Input: the raw HDMAP maps resized to `method.input_size` by the shared input transform (`data.resize`:
  nearest as the user's exp-23, bilinear as CPD-PatchCore) and replicated to 3 channels; the ImageNet
  normalisation is the backbone's own switch (`method.imagenet_norm`: exp-23 ran without it).
- Frozen features: the locally aggregated patch features (B, gh, gw, D) are what the feature cache stores, so
  PatchCore variants of a sweep (coreset ratio, banks, gates) share one backbone pass per image.
- Own bank: without reference banks (`fewshot.k = 0`), `fit` builds the memory bank from every patch of the
  train normals (the fit slice; the validation slice is never seen) subsampled by the greedy coreset.
- Condition-aware / CPD PatchCore: with `fewshot.k > 0` the reference banks (`feclip.condition`) replace the
  own bank: cold and warm banks of the k lowest / highest test/good file indices (or k train normals), chosen
  per image by any gate, with CPD's horizontal context when `fewshot.context` says so. The bank metric is
  L2; the image score is PatchCore's re-weighted one against the selected bank (a soft gate mixes the patch
  distances and the image scores of the two banks by its confidence).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

from feclip.identity import Reads
from feclip.methods.base import Method, MethodOutput
from feclip.methods.patchcore.backbone import TimmFeatures
from feclip.methods.patchcore.model import (
    PatchCore,
    PatchCoreError,
    anomaly_map,
    reweighted_image_score,
    score_patches,
)
from feclip.model.backbone import weights_fingerprint
from feclip.runtime import seed_everything

DESCRIPTION_FILE = "patchcore.json"
STATE_FILE = "patchcore.safetensors"  # memory bank (+ the backbone's weights when they are a random init)
FEATURES_VERSION = 1  # bump when patch_features changes what it computes


def _pretrained(value) -> bool | str:
    return False if value in (None, False, "false") else (True if value in (True, "true") else str(value))


class PatchCoreMethod(Method):
    name: ClassVar[str] = "patchcore"
    bank_metric: ClassVar[str] = "l2"
    caches_frozen: ClassVar[bool] = True
    frozen_feeds: ClassVar[str] = "distances"  # the patch features go straight to kNN
    # its own timm backbone and settings (`method.*`), never the CLIP groups, adapters, prompts or training
    reads: ClassVar[Reads] = Reads(("method",), headline=("method.backbone",))

    def __init__(self, model: PatchCore, *, settings: dict, uses_references: bool) -> None:
        self.model, self.settings, self.uses_references = model, settings, uses_references
        self._frozen_key: str | None = None

    @classmethod
    def config_random_init(cls, cfg: DictConfig) -> bool:
        return _pretrained(cfg.method.pretrained) is False

    @classmethod
    def config_backbone(cls, cfg: DictConfig) -> str:
        return cfg.method.backbone

    @classmethod
    def config_weights(cls, cfg: DictConfig):
        return cfg.method.pretrained

    @classmethod
    def _build(cls, settings: dict) -> PatchCore:
        features = TimmFeatures(
            settings["backbone"],
            blocks=settings["blocks"],
            pretrained=_pretrained(settings["pretrained"]),
            image_size=tuple(settings["input_size"]),
            normalize=settings["imagenet_norm"],
            final_norm=settings["final_norm"],
        )
        return PatchCore(
            features,
            coreset_ratio=settings["coreset_ratio"],
            num_neighbors=settings["num_neighbors"],
            smoothing_sigma=settings["smoothing_sigma"],
            chunk_size=settings["chunk_size"],
            projection_dim=settings["projection_dim"],
            seed=settings["seed"],
        )

    @classmethod
    def from_config(cls, cfg: DictConfig) -> PatchCoreMethod:
        seed_everything(cfg.seed)
        settings = {k: v for k, v in OmegaConf.to_container(cfg.method).items() if k != "name"}
        settings["seed"] = cfg.seed
        return cls(cls._build(settings), settings=settings, uses_references=cfg.fewshot.k > 0)

    def input_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # raw values; TimmFeatures normalises (imagenet_norm)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.settings["input_size"])

    @property
    def random_init(self) -> bool:
        return _pretrained(self.settings["pretrained"]) is False

    def frozen_key(self) -> str:
        if self._frozen_key is None:
            identity = {k: self.settings[k] for k in ("backbone", "blocks", "imagenet_norm", "final_norm")}
            identity |= {"weights": weights_fingerprint(self.model.features), "code": FEATURES_VERSION}
            self._frozen_key = json.dumps(identity, sort_keys=True, default=str)
        return self._frozen_key

    def frozen(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.patch_features(inputs)

    def fit(self, *, normals=None, aux=None, rt=None, frozen=None, log_epoch=None) -> dict[str, list[float]]:
        """The memory bank from every patch of the train normals (unless reference banks replace it)."""
        if self.uses_references or normals is None:
            return {}
        cached = frozen(normals) if frozen is not None else None
        parts = []
        for index in torch.arange(len(normals)).split(rt.batch_size):
            with torch.inference_mode(), rt.policy():
                patches = (
                    cached[index].features.float()
                    if cached is not None
                    else self.frozen(normals.inputs(index, rt.device))
                )
            parts.append(patches.to(rt.device).flatten(0, 2))
        self.model.fit_features(torch.cat(parts))
        return {}

    def forward(self, inputs=None, *, frozen=None) -> MethodOutput:
        patches = self.frozen(inputs) if frozen is None else frozen.features.float()
        size = self.input_size if frozen is None else frozen.input_size
        if self.model.memory_bank.shape[0] == 0:
            return MethodOutput(None, None, [patches])
        score, patch_scores = score_patches(
            patches,
            self.model.memory_bank,
            num_neighbors=self.model.num_neighbors,
            chunk_size=self.model.chunk_size,
        )
        return MethodOutput(
            score, anomaly_map(patch_scores, size, sigma=self.model.smoothing_sigma), [patches]
        )

    def reference_terms(self, out: MethodOutput, bank, bank_name: str, rows: torch.Tensor) -> dict:
        """L2 patch distances to the bank and PatchCore's re-weighted image score against it."""
        query = out.features[0][rows]
        ((distance, index),) = bank.nearest([query], bank_name)
        b = len(query)
        described = bank.describe(query.to(bank.device)).view(b, -1, bank.descriptors(bank_name, 0).shape[1])
        score = reweighted_image_score(
            distance.view(b, -1),
            index.view(b, -1),
            described,
            bank.descriptors(bank_name, 0),
            self.model.num_neighbors,
            chunk_size=self.model.chunk_size,
        )
        return {"distance": distance, "score": score}

    def with_references(self, out: MethodOutput, terms: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected bank's image score; its patch distances as the map (upsampled, smoothed)."""
        amap = anomaly_map(terms["distance"].float(), self.input_size, sigma=self.model.smoothing_sigma)
        return terms["score"].float(), amap

    def describe(self) -> dict:
        return {
            "method": self.name,
            "settings": self.settings,
            "uses_references": self.uses_references,
            "backbone_weights": weights_fingerprint(self.model.features),
        }

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / DESCRIPTION_FILE).write_text(json.dumps(self.describe(), indent=2))
        state = {"memory_bank": self.model.memory_bank.contiguous().cpu()}
        if self.random_init:
            state |= {
                f"features.{k}": v.contiguous().cpu() for k, v in self.model.features.state_dict().items()
            }
        save_file(state, directory / STATE_FILE)

    @classmethod
    def load(cls, directory: Path, *, weights: str | None = None) -> PatchCoreMethod:
        """The method saved in `directory`; `weights`: the backbone weights file's place now (checked
        against the fingerprint saved with the model)."""
        description = json.loads((Path(directory) / DESCRIPTION_FILE).read_text())
        settings = {**description["settings"], **({"pretrained": str(weights)} if weights else {})}
        model = cls._build(settings)
        state = load_file(Path(directory) / STATE_FILE)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        if features:
            model.features.load_state_dict(features)
        saved = description.get("backbone_weights")
        if saved is not None and saved != weights_fingerprint(model.features):
            raise PatchCoreError(
                f"{directory}: backbone {settings['backbone']} ({settings['pretrained']}) has other weights "
                f"here ({weights_fingerprint(model.features)}) than when the model was saved ({saved}); "
                "expected the same weights"
            )
        model.memory_bank = state["memory_bank"]
        return cls(model, settings=settings, uses_references=description["uses_references"])
