"""Validation of the composed Hydra config, before any work starts.

Hydra's struct mode already rejects unknown keys and unknown group options; this module rejects invalid values
of known keys with a one-line `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from feclip.errors import FeclipError


class ConfigError(FeclipError):
    """A config value is invalid; the message names the key and what was expected."""


CHOICES: dict[str, tuple[str, ...]] = {
    "mode": ("train_eval", "predict"),
    "device": ("auto", "cpu", "cuda"),
    "precision": ("auto", "fp32", "bf16"),
    "domain.name": ("A", "B", "C", "D"),
    "data.resize": ("bilinear", "nearest", "bicubic"),
    "data.intensity": ("raw", "fixed_scale", "per_image_minmax"),
    "freq.transform": ("dct", "fft"),
    "freq.lfs.statistic": ("mean", "abs", "energy"),
    "model.score": ("cls", "cls+max_map"),
    "model.map": ("prob", "logit_margin"),
    "aux.source": ("synthetic_faults", "hdmap_other_domains", "none", "mvtec", "visa"),
    "eval.protocol": ("hdmap", "benchmark"),
    "train.token_cache": ("disk", "memory", "off"),
    "fewshot.source": ("train", "test_extremes"),
    "fewshot.context": ("none", "mean_k", "multi_k"),
    "gating.name": ("none", "oracle", "p90", "clip_sim", "random", "soft"),
    "eval.calibration.operating_point": ("p99", "p99.5", "p99.9"),
    "aux.geometry": ("squash", "shorter_side_center_crop"),
}
TAP_PRESETS = ("groups", "last4", "spread3", "linspace")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _window(value: Any) -> bool:
    return isinstance(value, (list, ListConfig)) and len(value) == 2 and all(_positive_int(v) for v in value)


def _taps(value: Any) -> bool:
    if isinstance(value, str):
        return value in TAP_PRESETS
    return isinstance(value, (list, ListConfig)) and len(value) > 0 and all(isinstance(v, int) for v in value)


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: isinstance(v, int), "an integer"),
    "backbone.input_size": (_window, "[height, width] of positive integers"),
    "model.taps": (_taps, f"one of {', '.join(TAP_PRESETS)} or a list of block indices"),
    "model.n_taps": (_positive_int, "a positive integer"),
    "model.lam": (lambda v: isinstance(v, (int, float)) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "model.temperature": (lambda v: isinstance(v, (int, float)) and v > 0, "a positive number"),
    "model.smoothing_sigma": (lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0"),
    "freq.ffe.window": (_window, "[height, width] of positive integers"),
    "freq.lfs.window": (_window, "[height, width] of positive integers"),
    "freq.lfs.kernel": (lambda v: _positive_int(v) and v % 2 == 1, "an odd positive integer"),
    "data.val_fraction": (lambda v: isinstance(v, float) and 0.0 < v < 1.0, "a fraction in (0, 1)"),
    "train.epochs": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
    "train.batch_size": (_positive_int, "a positive integer"),
    "train.lr": (lambda v: isinstance(v, (int, float)) and v > 0, "a positive number"),
    "eval.batch_size": (_positive_int, "a positive integer"),
    "eval.val_percentile": (
        lambda v: isinstance(v, (int, float)) and 0 < v < 100,
        "a percentile in (0, 100)",
    ),
    "fewshot.k": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
}


def _check(key: str, value: Any) -> None:
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}={value!r} is not allowed; expected one of: {', '.join(CHOICES[key])}")
    if key in CHECKS and not CHECKS[key][0](value):
        raise ConfigError(f"{key}={value!r} is not allowed; expected {CHECKS[key][1]}")


def validate(cfg: DictConfig) -> None:
    """Raise `ConfigError` for the first invalid value (keys absent in this composition are skipped)."""
    for key in [*CHOICES, *CHECKS]:
        if OmegaConf.select(cfg, key, default=None) is not None:
            _check(key, OmegaConf.select(cfg, key))
    if cfg.gating.name != "none" and cfg.fewshot.k == 0:
        raise ConfigError(
            f"gating={cfg.gating.name} chooses between reference banks, but fewshot.k=0 builds none; "
            "set fewshot.k>0 (e.g. fewshot=k4)"
        )
    if cfg.mode == "predict" and not cfg.model.checkpoint:
        raise ConfigError("mode=predict needs model.checkpoint=<checkpoint directory>")
    if cfg.mode == "predict" and not cfg.predict.input:
        raise ConfigError("mode=predict needs predict.input=<folder or glob of TIFFs>")
