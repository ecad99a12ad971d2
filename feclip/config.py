"""Validation of the composed Hydra config, before any work starts.

Hydra's struct mode already rejects unknown keys and unknown group options; this module rejects invalid values
of known keys with a one-line `ConfigError` naming the key, the value and what is allowed.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from feclip.cache import CACHE_DTYPES
from feclip.condition.banks import CONTEXTS, SOURCES
from feclip.condition.gates import GATES, SOFT_BASES
from feclip.data.benchmarks import GEOMETRIES
from feclip.data.hdmap import DOMAINS
from feclip.data.sources import AUX_SOURCES
from feclip.data.transforms import INTENSITIES, RESIZES
from feclip.errors import FeclipError
from feclip.evaluation.calibration import THRESHOLD_SOURCES, point_name
from feclip.evaluation.split import SCORED_PARTS, SPLIT_PROTOCOLS
from feclip.jobs.registry import MODES, PROTOCOLS
from feclip.methods.patchcore.backbone import PRESETS as PATCHCORE_BACKBONES
from feclip.methods.registry import METHODS
from feclip.model.adapters import LFS_STATISTICS
from feclip.model.backbone import ACTIVATIONS, WEIGHT_SUFFIXES
from feclip.model.feclip import FC_INITS, MAPS, SCORES, TAP_PRESETS
from feclip.model.frequency import TRANSFORMS
from feclip.model.prompts import SENTENCE_AVERAGES
from feclip.precision import PRECISIONS
from feclip.registry import Registry
from feclip.runtime import CACHE_MODES, DEVICES
from feclip.search.space import AGGREGATES, DIRECTIONS, SAMPLERS, STAGES, is_dev_objective


class ConfigError(FeclipError):
    """A config value is invalid; the message names the key and what was expected."""


REGISTRIES = (
    DEVICES,
    PRECISIONS,
    CACHE_MODES,
    MODES,
    PROTOCOLS,
    METHODS,
    DOMAINS,
    RESIZES,
    INTENSITIES,
    GEOMETRIES,
    AUX_SOURCES,
    TRANSFORMS,
    LFS_STATISTICS,
    SCORES,
    MAPS,
    SOURCES,
    CONTEXTS,
    GATES,
    SOFT_BASES,
    FC_INITS,
    CACHE_DTYPES,
    PATCHCORE_BACKBONES,
    ACTIVATIONS,
    SENTENCE_AVERAGES,
    SPLIT_PROTOCOLS,
    THRESHOLD_SOURCES,
    SAMPLERS,
    AGGREGATES,
    DIRECTIONS,
    STAGES,
)
CHOICES: dict[str, Registry] = {registry.key: registry for registry in REGISTRIES}


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _window(value: Any) -> bool:
    return isinstance(value, (list, ListConfig)) and len(value) == 2 and all(_positive_int(v) for v in value)


def _domains(value: Any) -> bool:
    return isinstance(value, (list, ListConfig)) and len(value) > 0 and all(v in DOMAINS for v in value)


def _taps(value: Any) -> bool:
    if isinstance(value, str):
        return value in TAP_PRESETS
    return isinstance(value, (list, ListConfig)) and len(value) > 0 and all(isinstance(v, int) for v in value)


CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: _integer(v) and 0 <= v < 2**32, "an integer in [0, 2**32 - 1] (numpy's seed range)"),
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
    "train.fc_lr_mult": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "train.weight_cls": (lambda v: _number(v) and v >= 0, "a loss weight >= 0"),
    "train.weight_mask": (lambda v: _number(v) and v >= 0, "a loss weight >= 0"),
    "data.cold_warm_split": (_positive_int, "a positive integer (test file index < split is cold) or null"),
    "predict.batch_size": (_positive_int, "a positive integer"),
    "aux.max_normals": (_positive_int, "a positive integer or null (all)"),
    "aux.max_per_domain": (_positive_int, "a positive integer or null (all)"),
    "aux.faults_per_normal": (lambda v: _number(v) and v > 0, "a positive number"),
    "eval.n_map_examples": (_positive_int, "a positive integer"),
    "eval.calibration.topk": (_positive_int, "a positive integer"),
    "train.cache_max_gb": (
        lambda v: v == "auto" or (_number(v) and v > 0),
        "a positive number of GB, auto or null",
    ),
    "eval.split.seed": (lambda v: _number(v) and isinstance(v, int) and v >= 0, "an integer >= 0"),
    "eval.split.refs_per_condition": (_positive_int, "a positive integer"),
    "eval.split.dev_fraction": (lambda v: _number(v) and 0 <= v < 1, "a fraction in [0, 1)"),
    "eval.split.score": (
        lambda v: (
            isinstance(v, (list, ListConfig)) and 0 < len(v) == len(set(v)) and set(v) <= set(SCORED_PARTS)
        ),
        f"a non-empty list of the parts {', '.join(SCORED_PARTS)}",
    ),
    "eval.threshold.per_condition": (lambda v: isinstance(v, bool), "true or false"),
    "eval.threshold.false_alarm_rates": (
        lambda v: _numbers(v) and len(v) > 0 and all(0 < r < 1 for r in v),
        "a non-empty list of rates in (0, 1)",
    ),
    "eval.threshold.bootstrap": (lambda v: isinstance(v, int) and v >= 2, "an integer >= 2"),
    "eval.bootstrap": (lambda v: _number(v) and isinstance(v, int) and v >= 0, "an integer >= 0"),
    "search.name": (
        lambda v: isinstance(v, str) and re.fullmatch(r"[\w.-]+", v) is not None,
        "a name of letters, digits, '_', '.', '-' (the study's name and folder)",
    ),
    "search.objective": (
        is_dev_objective,
        "a metric of the dev part, dev/<metric> (e.g. dev/acc_fa1_cold), or a list of them: the test part is "
        "for claims (search.stage=confirm), and choosing on it would bias them",
    ),
    "search.params": (lambda v: isinstance(v, (dict, DictConfig)) and len(v) > 0, "at least one parameter"),
    "search.domains": (_domains, f"a non-empty list of {', '.join(DOMAINS)}, or null (the config's domain)"),
    "search.n_trials": (_positive_int, "a positive integer"),
    "search.n_jobs": (_positive_int, "a positive integer"),
    "search.seed": (lambda v: _integer(v) and v >= 0, "an integer >= 0"),
    "search.confirm.seeds": (
        lambda v: isinstance(v, (list, ListConfig)) and len(v) > 0 and all(_integer(s) and s >= 0 for s in v),
        "a non-empty list of integers >= 0",
    ),
    "search.confirm.domains": (
        _domains,
        f"a non-empty list of {', '.join(DOMAINS)}, or null (search.domains)",
    ),
    "search.confirm.baseline": (
        lambda v: isinstance(v, (list, ListConfig)) and all(isinstance(o, str) for o in v),
        "a list of overrides (e.g. [experiment=patchcore_exp23])",
    ),
}


def _check(key: str, value: Any) -> None:
    if key in CHOICES:
        CHOICES[key].get_entry(value, key)
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
    _check_calibration(cfg)
    _check_split(cfg)
    _check_loss_weights(cfg)
    METHODS.get_entry(cfg.method.name).validate(cfg)
    if cfg.mode == "predict" and not cfg.model.checkpoint:
        raise ConfigError("mode=predict needs model.checkpoint=<checkpoint directory>")
    if cfg.mode == "predict" and not cfg.predict.input:
        raise ConfigError("mode=predict needs predict.input=<folder or glob of TIFFs>")


def _check_calibration(cfg: DictConfig) -> None:
    """eval.calibration: percentiles in (0, 100) and an operating point among them (p<percentile>) or the
    false-alarm points of eval.threshold (fa<100 x rate>)."""
    calibration = OmegaConf.select(cfg, "eval.calibration", default=None)
    if calibration is None:
        return
    percentiles = calibration.percentiles
    if not _numbers(percentiles) or not percentiles or not all(0 < p < 100 for p in percentiles):
        raise ConfigError(
            f"eval.calibration.percentiles={list(percentiles)!r} is not allowed; "
            "expected a non-empty list of numbers in (0, 100)"
        )
    rates = OmegaConf.select(cfg, "eval.threshold.false_alarm_rates", default=None) or []
    points = [f"p{p:g}" for p in percentiles] + [point_name(rate) for rate in rates]
    if calibration.operating_point not in points:
        raise ConfigError(
            f"eval.calibration.operating_point={calibration.operating_point!r} is not allowed; "
            f"expected a percentile or false-alarm point: {', '.join(points)}"
        )


def _check_split(cfg: DictConfig) -> None:
    """eval.split / eval.threshold against each other and the few-shot and gating choices."""
    split = OmegaConf.select(cfg, "eval.split", default=None)
    if split is None:
        return
    study, threshold = split.protocol == "study", cfg.eval.threshold
    scored = list(split.get("score", SCORED_PARTS))
    if not study and "test" not in scored:
        raise ConfigError(
            f"eval.split.score={scored} is not allowed with eval.split.protocol=whole_test; expected "
            "[dev, test], or protocol=study (whole_test has no dev part)"
        )
    if threshold.source == "refs" and not study:
        raise ConfigError(
            "eval.threshold.source=refs is not allowed with eval.split.protocol=whole_test; "
            "expected source=val, or protocol=study (the refs part holds the normals)"
        )
    routed = GATES.get_entry(cfg.gating.name).assigns_condition
    if threshold.per_condition and threshold.source == "val" and not routed:
        raise ConfigError(
            "eval.threshold.per_condition=true with source=val needs a gate (held-out train normals carry no "
            "condition); expected gating=<p90|clip_sim|...> or eval.threshold.source=refs"
        )
    banks = cfg.fewshot.k if study and cfg.fewshot.source == "test_extremes" else 0
    if banks > split.refs_per_condition or (threshold.source == "refs" and banks == split.refs_per_condition):
        raise ConfigError(
            f"fewshot.k={cfg.fewshot.k} is not allowed with eval.split.refs_per_condition="
            f"{split.refs_per_condition}; expected k <= refs_per_condition (banks come from the refs part), "
            "k < refs_per_condition with eval.threshold.source=refs (its normals: the refs not in a bank)"
        )


def _check_loss_weights(cfg: DictConfig) -> None:
    """Training needs a loss: train.weight_cls and train.weight_mask (each >= 0) cannot both be 0."""
    train = OmegaConf.select(cfg, "train", default=None)
    if train is None or not train.get("epochs") or "weight_cls" not in train:
        return
    if train.weight_cls == 0 and train.weight_mask == 0:
        raise ConfigError(
            f"train.weight_cls=0 and train.weight_mask=0 leave no loss to train {train.epochs} epochs on; "
            "expected a positive weight (or train.epochs=0)"
        )


def _numbers(values: Any) -> bool:
    return isinstance(values, (list, ListConfig)) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    )


# Keys that name files or folders. A relative value means the launch directory (where `python run.py` was
# typed), also when `hydra.job.chdir=true` moves the job into its output folder.
PATH_KEYS = (
    "data.root",
    "cache_dir",
    "aux.root",
    "eval.datasets.*.root",
    "model.checkpoint",
    "predict.input",
    "predict.out",
    "backbone.pretrained",
    "predict.backbone_weights",
)


def _is_relative_path(key: str, value: Any) -> bool:
    if not isinstance(value, str) or not value or "://" in value or value.startswith("runs:/"):
        return False
    if key == "backbone.pretrained" and not value.endswith(WEIGHT_SUFFIXES):
        return False  # an open_clip tag (openai, laion2b_s34b_b88k), not a file
    return not Path(value).expanduser().is_absolute()


def absolute_paths(cfg: DictConfig, base_dir: Path) -> DictConfig:
    """`cfg` with every relative `PATH_KEYS` value made absolute against `base_dir` (a glob stays a glob)."""
    resolved = cfg.copy()
    for pattern in PATH_KEYS:
        head, _, tail = pattern.partition(".*.")
        nodes = OmegaConf.select(resolved, head, default=None) if tail else None
        keys = [f"{head}.{i}.{tail}" for i in range(len(nodes))] if tail and nodes else [pattern]
        for key in keys:
            value = OmegaConf.select(resolved, key, default=None)
            if _is_relative_path(key, value):
                OmegaConf.update(resolved, key, str(Path(base_dir) / Path(value).expanduser()), merge=False)
    return resolved
