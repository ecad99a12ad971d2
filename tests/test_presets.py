"""Every experiment preset (feclip/conf/experiment/*.yaml) composes and validates, on the real data layout
(data=hdmap) with the preset's own backbones and offline with the tiny random-init stand-ins; the baseline
presets (experiments/006_baselines) carry the settings of docs/rivals.md."""

from __future__ import annotations

from functools import cache

import pytest
from helpers import CONF, compose
from omegaconf import OmegaConf

from feclip.config import validate
from feclip.methods.patchcore.backbone import PRESETS

NAMES = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))

# Offline stand-ins: the tiny CLIP for feclip/winclip, the tiny timm ViT (random init, own blocks) for
# PatchCore.
OFFLINE = {
    "patchcore": ["method.backbone=tiny", "method.pretrained=null", "method.blocks=null"],
    "feclip": ["backbone=tiny"],
    "winclip": ["backbone=tiny"],
}

# The settings each baseline preset must carry (docs/rivals.md section in the comment).
EXPECTED = {
    "patchcore_exp23": {  # section 3.1
        "method.name": "patchcore",
        "method.backbone": "dinov2_vits14",
        "method.pretrained": True,
        "method.blocks": ["blocks.8"],
        "method.input_size": [518, 518],
        "method.imagenet_norm": False,
        "method.coreset_ratio": 0.01,
        "method.num_neighbors": 9,
        "data.resize": "nearest",
        "fewshot.k": 0,
        "gating.name": "none",
    },
    "patchcore_vitb": {  # section 3.2, full
        "method.name": "patchcore",
        "method.backbone": "dinov2_vitb14",
        "method.blocks": ["blocks.8"],
        "method.input_size": [518, 518],
        "method.imagenet_norm": True,
        "method.coreset_ratio": 0.01,
        "data.resize": "bilinear",
        "fewshot.k": 0,
    },
    "ca_patchcore": {  # section 5.4 / 5.2
        "method.name": "patchcore",
        "method.backbone": "dinov2_vitb14",
        "method.blocks": ["blocks.8"],
        "method.imagenet_norm": True,
        "data.resize": "bilinear",
        "fewshot.k": 16,
        "fewshot.source": "test_extremes",
        "fewshot.context": "none",
        "gating.name": "oracle",
        "seed": 42,
    },
    "cpd_patchcore": {  # section 6.2 / 6.1
        "method.name": "patchcore",
        "method.backbone": "dinov2_vitb14",
        "method.blocks": ["blocks.8", "blocks.11"],
        "method.input_size": [518, 518],
        "method.imagenet_norm": True,
        "data.resize": "bilinear",
        "fewshot.k": 16,
        "fewshot.source": "test_extremes",
        "fewshot.context": "multi_k",
        "fewshot.context_ks": [2, 3],
        "gating.name": "none",
        "seed": 42,
    },
    "winclip": {  # section 4.1 / 4.2
        "method.name": "winclip",
        "backbone.name": "ViT-B-16-plus-240",
        "backbone.input_size": [240, 240],
        "prompt.class_name": "industrial sensor data",
        "method.scales": [2, 3],
        "method.visual_only": False,
        "data.resize": "nearest",
        "fewshot.k": 0,
        "gating.name": "none",
    },
    "ca_winclip": {  # section 5.3 / 5.2
        "method.name": "winclip",
        "backbone.name": "ViT-B-16-plus-240",
        "method.scales": [2, 3],
        "method.visual_only": True,
        "data.resize": "nearest",
        "fewshot.k": 2,
        "fewshot.source": "test_extremes",
        "gating.name": "oracle",
    },
}
SWEEPS = {  # the sweeper axes of the baseline presets
    "ca_patchcore": {"gating": "oracle,p90,none,random"},
    "cpd_patchcore": {},
    "winclip": {"prompt": "hdmap_sensor,hdmap_fault_heatmap,hdmap_expert"},
    "ca_winclip": {"gating": "oracle,clip_sim,p90,none"},
}


# The keys the offline stand-in replaces (everything else in EXPECTED must survive it).
@cache
def _composed(*overrides: str, hydra: bool = False):
    return compose(*overrides, hydra=hydra)


REPLACED = {"method.backbone", "method.pretrained", "method.blocks", "backbone.name", "backbone.input_size"}


def _select(cfg, key):
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _assert_settings(cfg, name, skip=frozenset()):
    for key, value in EXPECTED.get(name, {}).items():
        if key not in skip:
            assert _select(cfg, key) == value, f"{name}: {key}={_select(cfg, key)!r}, expected {value!r}"


def test_the_baseline_presets_exist():
    assert set(EXPECTED) <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_preset_composes_and_validates_on_hdmap(name):
    cfg = _composed(f"experiment={name}", "data=hdmap")
    validate(cfg)
    _assert_settings(cfg, name)
    if cfg.method.name == "patchcore":
        PRESETS.get_entry(cfg.method.backbone, "method.backbone")  # a known timm preset (no model is built)
        if name in EXPECTED:  # the baselines run on real weights
            assert PRESETS[cfg.method.backbone].has_weights and cfg.method.pretrained is True


@pytest.mark.parametrize("name", NAMES)
def test_preset_validates_offline_with_the_tiny_backbones(name):
    method = _composed(f"experiment={name}", "data=hdmap").method.name
    cfg = compose(f"experiment={name}", *OFFLINE[method])
    validate(cfg)
    _assert_settings(cfg, name, skip=REPLACED)
    if method == "patchcore":
        assert PRESETS[cfg.method.backbone].has_weights is False and cfg.method.pretrained is None
    else:
        assert cfg.backbone.pretrained is None


@pytest.mark.parametrize("name", NAMES)
def test_preset_header_and_sweep_axes(name):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n")
    params = compose(f"experiment={name}", hydra=True).hydra.sweeper.params or {}
    if name in EXPECTED:
        assert "docs/rivals.md section" in text and "Not matched" in text
        assert "tracking.experiment=baselines" in text
        assert dict(params) == SWEEPS.get(name, {})
    for key, values in dict(params).items():  # every value of every group axis composes and validates
        if key == "seed":
            continue
        for value in str(values).split(","):
            validate(compose(f"experiment={name}", "data=hdmap", f"{key}={value}"))
