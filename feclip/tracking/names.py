"""Run names, variants and the identity of a Hydra job (`JobInfo`), from the resolved config.

A run's name is what makes the job different from the embedded default, however it was typed:
- the domain first;
- then every config group whose choice differs from the default (`freq=fft` -> `fft`, `method=patchcore` ->
  `patchcore`), in group order;
- then every value that differs from what the chosen group options give (`model.lam=0.3` -> `lam=0.3`,
  `freq.lfs.window=[1,5]` -> `window=1,5`), sorted by key;
- the seed last when it is not the default.
Where a job runs and how long it trains are not part of a variant (`IGNORED`: tracking, device, data root and
size, epochs, caps, batch sizes, caches, predict settings, the search that ran it); a preset
(`experiment=...`, a search space `search=...`) names its effects, so `experiment=hdmap_horizontal` and the
same choices typed out get the same name. The variant is the name without domain and seed: what a report row
groups over domains and seeds.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from feclip.tracking.sweep import parent_run_id_for_sweep

IGNORED = (
    "hydra",
    "search",  # the search that ran the job (its trial's values are the job's own keys)
    "tracking",
    "device",
    "precision",
    "cache_dir",
    "compare",
    "mode",
    "predict",
    "data.root",
    "data.synthetic.n_train",
    "data.synthetic.n_test",
    "train.epochs",
    "train.token_cache",
    "train.cache_dtype",
    "train.cache_max_gb",
    "aux.max_normals",
    "aux.max_per_domain",
    "eval.batch_size",
    "eval.figures",
    "eval.n_map_examples",
    "eval.split",  # the study's split, not a variant: the eval_set tag tells runs scored on other images
    "fewshot.chunk_size",
)
PRESETS = ("experiment", "search")  # groups that name their effects, not themselves
NAME_MAX_LENGTH = 80
FIRST, LAST = "domain", "seed"


def _ignored(key: str) -> bool:
    return any(key == prefix or key.startswith(f"{prefix}.") for prefix in IGNORED)


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(_value, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _name(parts: list[str]) -> str:
    name = "-".join(parts) or "default"
    if len(name) <= NAME_MAX_LENGTH:
        return name
    return f"{name[: NAME_MAX_LENGTH - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def name_parts(cfg: dict, base: dict, choices: dict[str, str], default_choices: dict[str, str]) -> dict:
    """{"domain", "choices", "values", "seed", "method"}: what the resolved `cfg` changes relative to `base`
    (the config the same group choices compose to, without value overrides) and to `default_choices`."""
    groups = [
        option
        for group, option in choices.items()
        if "/" not in group and group not in ("domain", *PRESETS) and option != default_choices.get(group)
    ]
    ours, theirs = _leaves(cfg), _leaves(base)
    changed = sorted(
        k for k, v in ours.items() if theirs.get(k, object()) != v and not _ignored(k) and k != LAST
    )
    values = [
        f"{key.rsplit('.', 1)[-1]}={_value(ours[key])}" for key in changed if not key.startswith("domain.")
    ]
    seed = f"seed={cfg[LAST]}" if cfg.get(LAST) != theirs.get(LAST) else None
    method = choices.get("method") if choices.get("method") != default_choices.get("method") else None
    domain = cfg.get(FIRST, {})
    domain = domain.get("name") if isinstance(domain, dict) else domain
    return {"domain": domain, "choices": groups, "values": values, "seed": seed, "method": method}


def run_name(parts: dict) -> str:
    """Domain, then the differing choices and values, seed last: `C-fft-lam=0.3-seed=42`."""
    return _name([p for p in (parts["domain"], *parts["choices"], *parts["values"], parts["seed"]) if p])


def variant(parts: dict) -> str:
    """The run name without domain, method and seed (`default` when nothing else differs); reports and the
    `method` tag name the method beside it."""
    return _name([*(c for c in parts["choices"] if c != parts["method"]), *parts["values"]])


def _compose_base(choices: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """(the config of these group choices without value overrides, the default group choices)."""
    from hydra import compose

    overrides = [f"{g}={o}" for g, o in choices.items() if "/" not in g and g not in PRESETS and o != "None"]
    base = OmegaConf.to_container(compose(config_name="config", overrides=overrides), resolve=True)
    defaults = compose(config_name="config", overrides=[], return_hydra_config=True).hydra.runtime.choices
    return base, {str(k): str(v) for k, v in defaults.items()}


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
    def from_hydra(cls, cfg: DictConfig, hydra_cfg: DictConfig | None = None) -> JobInfo:
        """From the job's resolved `cfg` and the `hydra` node (default: `HydraConfig.get()`); the parent run
        is looked up only in multirun mode."""
        from hydra.core.hydra_config import HydraConfig

        hc = hydra_cfg if hydra_cfg is not None else HydraConfig.get()
        choices = {str(k): str(v) for k, v in hc.runtime.choices.items()}
        base, default_choices = _compose_base(choices)
        job_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # composed with hydra
        parts = name_parts(OmegaConf.to_container(job_cfg, resolve=True), base, choices, default_choices)
        parent, sweep_dir = None, None
        if str(hc.mode).endswith("MULTIRUN"):
            sweep_dir = Path(str(hc.sweep.dir))
            sweep_dir = sweep_dir if sweep_dir.is_absolute() else Path(hc.runtime.cwd) / sweep_dir
            parent = parent_run_id_for_sweep(sweep_dir)
        task = tuple(str(o) for o in hc.overrides.task)
        folder = None if sweep_dir is None else str(sweep_dir)
        return cls(run_name(parts), variant(parts), choices, parent, task, folder)
