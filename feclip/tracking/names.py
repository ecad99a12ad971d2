"""Run names, variants and the identity of a Hydra job (`JobInfo`): name, variant, choices, parent run."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from feclip.tracking.sweep import parent_run_id_for_sweep

# Overrides that do not define a variant: where the job runs and where it is tracked.
NAME_IGNORED_KEYS = ("tracking", "device", "precision", "cache_dir", "hydra", "experiment", "mode")
NAME_MAX_LENGTH = 80
SCALAR_PATTERN = r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|true|false|null"


def _override_part(override: str) -> tuple[str, str] | None:
    """('key', 'name part') of one Hydra override, or None when it does not define the variant."""
    key, _, value = override.lstrip("+").partition("=")
    if key.startswith("~"):
        return key[1:], f"no-{key[1:].rsplit('.', 1)[-1]}"
    if key.split(".")[0].split("/")[0] in NAME_IGNORED_KEYS:
        return None
    value = value.strip("'\"").rstrip("/").rsplit("/", 1)[-1] or value
    leaf = key.rsplit(".", 1)[-1]
    scalar = "." in key or re.fullmatch(SCALAR_PATTERN, value, flags=re.IGNORECASE) is not None
    return key, f"{leaf}={value}" if scalar else value


def _name(parts: list[str]) -> str:
    name = "-".join(parts) or "default"
    if len(name) <= NAME_MAX_LENGTH:
        return name
    return f"{name[: NAME_MAX_LENGTH - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _ordered_parts(overrides: list[str], keep_domain_seed: bool) -> list[str]:
    parts = dict(p for p in map(_override_part, overrides) if p is not None)
    domain, seed = parts.pop("domain", None), parts.pop("seed", None)
    middle = [parts[key] for key in sorted(parts)]
    return [
        *([domain] if domain and keep_domain_seed else []),
        *middle,
        *([seed] if seed and keep_domain_seed else []),
    ]


def run_name_from_overrides(overrides: list[str]) -> str:
    """Short stable run name: domain first, other overrides sorted by key, seed last; group overrides give
    their option (`freq=dct` -> `dct`), value overrides `leaf=value` (`model.lam=0.5` -> `lam=0.5`).
    Overrides of where/how a job is tracked or run (tracking, device, hydra, ...) are left out.
    ["domain=C", "freq=dct", "gating=none"] -> "C-dct-none"; [] -> "default"."""
    return _name(_ordered_parts(list(overrides), keep_domain_seed=True))


def variant_from_overrides(overrides: list[str]) -> str:
    """The run name without domain and seed: what a report row groups over seeds and domains."""
    return _name(_ordered_parts(list(overrides), keep_domain_seed=False))


@dataclass(frozen=True)
class JobInfo:
    """Identity of one Hydra job for tracking: run name, variant, group choices and the sweep's parent run."""

    run_name: str
    variant: str
    choices: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    overrides: tuple[str, ...] = ()
    sweep_dir: str | None = None  # the multirun folder (for a job of a sweep)

    @classmethod
    def from_hydra(cls, hydra_cfg: DictConfig | None = None) -> JobInfo:
        """From the `hydra` node (default: `HydraConfig.get()`); the domain choice names the run even when it
        was not overridden; the parent run is looked up only in multirun mode."""
        from hydra.core.hydra_config import HydraConfig

        hc = hydra_cfg if hydra_cfg is not None else HydraConfig.get()
        overrides = [str(o) for o in hc.overrides.task]
        choices = {str(k): str(v) for k, v in hc.runtime.choices.items()}
        if "domain" in choices and not any(o.lstrip("+").startswith("domain=") for o in overrides):
            overrides.insert(0, f"domain={choices['domain']}")
        parent, sweep_dir = None, None
        if str(hc.mode).endswith("MULTIRUN"):
            sweep_dir = Path(str(hc.sweep.dir))
            sweep_dir = sweep_dir if sweep_dir.is_absolute() else Path(hc.runtime.cwd) / sweep_dir
            parent = parent_run_id_for_sweep(sweep_dir)
        task = tuple(str(o) for o in hc.overrides.task)
        names = (run_name_from_overrides(overrides), variant_from_overrides(overrides))
        return cls(*names, choices, parent, task, None if sweep_dir is None else str(sweep_dir))
