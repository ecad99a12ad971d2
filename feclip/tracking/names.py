"""Run names, variants and the identity of a Hydra job (`JobInfo`), from the resolved config.

A variant says what a run computes, in the keys its method reads (`Method.reads`, `feclip.identity`):
- the method, then `·`;
- its headline, always, so a default is named by what it is: FE-CLIP its `freq` option (`feclip·dct`),
  PatchCore its backbone (`patchcore·tiny`), WinCLIP its `prompt` option (`winclip·paper`);
- then every other config group the method reads whose choice differs from the default (`fewshot=cpd` ->
  `cpd`), in Hydra's order of choices;
- then every value the method reads that differs from what the chosen group options give (`model.lam=0.3` ->
  `lam=0.3`, `freq.lfs.window=[1,5]` -> `window=1,5`), sorted by key.
A run's name is `<domain>-<variant>`, then the seed when it is not the default: `C-feclip·fft-lam=0.3-seed=2`.
What the method does not read never names it (PatchCore with `freq=fft` is `patchcore·tiny`), nor does where
a job runs and how long it trains (`IGNORED`: tracking, device, precision, data root and size, epochs, caps,
batch sizes, caches, predict settings, the search that ran it); a preset (`experiment=...`, a search space
`search=...`) names its effects, so `experiment=hdmap_horizontal` and the same choices typed out get the same
name. The variant is what a report row groups over domains and seeds; device and precision are tags (the
report adds them where runs mix them).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from feclip.identity import EVERYTHING, NEVER, SEPARATOR, Reads, leaves, under
from feclip.tracking.sweep import parent_run_id_for_sweep

IGNORED = (
    *NEVER,  # where a job runs and is tracked; the search that ran it (a trial's values are its own keys)
    "device",
    "precision",
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
    "eval.bootstrap",  # the intervals' resamples, not what is scored
    "eval.figures",
    "eval.n_map_examples",
    "eval.split",  # the study's split, not a variant: the eval_set tag tells runs scored on other images
    "fewshot.chunk_size",
    "method.chunk_size",
    "method.window_batch",
)
PRESETS = ("experiment", "search")  # groups that name their effects, not themselves
NAME_MAX_LENGTH = 80
VARIANT_MAX_LENGTH = 64  # a run name holds its variant whole: domain, variant, seed stay near NAME_MAX_LENGTH
FIRST, LAST = "domain", "seed"
NOT_NAMING = ("domain", *PRESETS, "method")  # groups named elsewhere (domain, method) or by their effects


def _ignored(key: str) -> bool:
    return any(under(key, prefix) for prefix in IGNORED)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(_value, value))
    return str(value).lower() if isinstance(value, bool) else str(value)


def _name(parts: list[str], limit: int = NAME_MAX_LENGTH) -> str:
    name = "-".join(parts) or "default"
    if len(name) <= limit:
        return name
    return f"{name[: limit - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _headline(key: str, cfg: dict, choices: dict[str, str]) -> str | None:
    """A headline key's name: a group's chosen option, else the key's value (None when it has none)."""
    if key in choices:
        return choices[key]
    value = leaves(cfg).get(key)
    return None if value is None or isinstance(value, dict) else _value(value)


def name_parts(
    cfg: dict, base: dict, choices: dict[str, str], default_choices: dict[str, str], reads: Reads = EVERYTHING
) -> dict:
    """{"domain", "method", "headline", "choices", "values", "seed"}: what the resolved `cfg` computes, in the
    keys `reads` covers, relative to `base` (the config the same group choices compose to, without value
    overrides) and to `default_choices`."""
    method = cfg.get("method", {}).get("name") if isinstance(cfg.get("method"), dict) else None
    headline = [name for key in reads.headline if (name := _headline(key, cfg, choices))]
    option = choices.get("method")
    groups = [option] if method and option not in (None, method) else []  # a preset of the method group
    groups += [
        option
        for group, option in choices.items()
        if "/" not in group
        and group not in NOT_NAMING
        and group not in reads.headline
        and not _ignored(group)
        and reads.touches(group)
        and option != default_choices.get(group)
    ]
    ours, theirs = leaves(cfg), leaves(base)
    changed = sorted(
        key
        for key, value in ours.items()
        if theirs.get(key, object()) != value
        and not _ignored(key)
        and key not in (LAST, *reads.headline)
        and not key.startswith(f"{FIRST}.")
        and reads.covers(key)
    )
    values = [f"{key.rsplit('.', 1)[-1]}={_value(ours[key])}" for key in changed]
    seed = f"seed={cfg[LAST]}" if cfg.get(LAST) != theirs.get(LAST) else None
    domain = cfg.get(FIRST, {})
    domain = domain.get("name") if isinstance(domain, dict) else domain
    return {
        "domain": domain,
        "method": method,
        "headline": headline,
        "choices": groups,
        "values": values,
        "seed": seed,
    }


def variant(parts: dict) -> str:
    """`<method>·<headline>-<choices>-<values>` (`feclip·fft-lam=0.3`); without a method (a config that has
    none) the choices and values alone, `default` when nothing differs."""
    rest = [*parts.get("headline", ()), *parts["choices"], *parts["values"]]
    if not parts.get("method"):
        return _name(rest)
    return _name([f"{parts['method']}{SEPARATOR}{'-'.join(rest) or 'default'}"], VARIANT_MAX_LENGTH)


def run_name(parts: dict) -> str:
    """`<domain>-<variant>`, the seed last when it is not the default: `C-feclip·fft-lam=0.3-seed=2` (the
    variant whole, shortened as the variant tag is)."""
    if parts.get("method"):
        return "-".join(p for p in (parts["domain"], variant(parts), parts["seed"]) if p)
    return _name([p for p in (parts["domain"], *parts["choices"], *parts["values"], parts["seed"]) if p])


def _compose_base(choices: dict[str, str], searchpath: list[str]) -> tuple[dict, dict[str, str]]:
    """(the config of these group choices without value overrides, the default group choices); `searchpath`:
    the job's `hydra.searchpath` (config folders of the user's whose options the choices may name)."""
    from hydra import compose

    overrides = [f"{g}={o}" for g, o in choices.items() if "/" not in g and g not in PRESETS and o != "None"]
    overrides += [f"hydra.searchpath=[{','.join(repr(str(p)) for p in searchpath)}]"] if searchpath else []
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
    def from_hydra(
        cls, cfg: DictConfig, hydra_cfg: DictConfig | None = None, reads: Reads = EVERYTHING
    ) -> JobInfo:
        """From the job's resolved `cfg`, the `hydra` node (default: `HydraConfig.get()`) and what its method
        reads (`feclip.methods.registry.job_reads`); the parent run is looked up only in multirun mode."""
        from hydra.core.hydra_config import HydraConfig

        hc = hydra_cfg if hydra_cfg is not None else HydraConfig.get()
        choices = {str(k): str(v) for k, v in hc.runtime.choices.items()}
        base, default_choices = _compose_base(choices, list(hc.get("searchpath") or []))
        job_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])  # composed with hydra
        resolved = OmegaConf.to_container(job_cfg, resolve=True)
        parts = name_parts(resolved, base, choices, default_choices, reads)
        parent, sweep_dir = None, None
        if str(hc.mode).endswith("MULTIRUN"):
            sweep_dir = Path(str(hc.sweep.dir))
            sweep_dir = sweep_dir if sweep_dir.is_absolute() else Path(hc.runtime.cwd) / sweep_dir
            parent = parent_run_id_for_sweep(sweep_dir)
        task = tuple(str(o) for o in hc.overrides.task)
        folder = None if sweep_dir is None else str(sweep_dir)
        return cls(run_name(parts), variant(parts), choices, parent, task, folder)

    @classmethod
    def from_config(cls, cfg: DictConfig, reads: Reads = EVERYTHING) -> JobInfo:
        """For a config composed without its `hydra` node (its group choices unknown, `feclip.api`): named by
        the values that differ from the default config in what the method `reads` (`C-transform=fft` where
        Hydra's job is `C-fft`). Needs Hydra initialised on the config folder (`initialize_config_dir`)."""
        base, default_choices = _compose_base({}, [])
        parts = name_parts(OmegaConf.to_container(cfg, resolve=True), base, {}, default_choices, reads)
        return cls(run_name(parts), variant(parts))
