"""A search's plan: the sweep's config, its space, where the study and the jobs live, and every check that
can be made before the first trial (the config, the space, each parameter value composed and validated,
the study of the confirm stage). The MLflow sweep callback asks the sweeper for the same checks, so a refused
search leaves nothing behind: no sweep folder, no parent run."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from optuna.distributions import BaseDistribution, CategoricalDistribution

from feclip import cli
from feclip.config import validate
from feclip.errors import FeclipError
from feclip.files import writable_folder
from feclip.search.space import (
    SAMPLERS,
    SearchError,
    Space,
    build_space,
    identity,
    objective_names,
    override_value,
)
from feclip.search.study import check_free, load_study, pick
from feclip.tracking.sweep import sweep_dir_of

TRIAL_SCORES = "eval.split.score=[dev]"  # a trial computes no test number: the confirm stage does


@dataclass(frozen=True)
class Plan:
    """A checked search: the sweep's `config` (with `hydra`), its `space`, the study's `folder`
    (search.dir) and the jobs' `sweep_dir` (hydra.sweep.dir), both absolute."""

    config: DictConfig
    space: Space
    folder: Path
    sweep_dir: Path

    @property
    def search(self) -> DictConfig:
        return self.config.search

    def identity(self) -> dict:
        return identity(self.search, self.space)

    def names(self) -> list[str]:
        return objective_names(self.search, self.space.domains)

    def target(self) -> int:
        """Trials in all: search.n_trials, at most the grid's size for search.sampler=grid."""
        grid = SAMPLERS.get_entry(self.search.sampler).discrete
        return min(self.search.n_trials, self.space.size()) if grid else self.search.n_trials

    def job_overrides(self, overrides: Sequence[str], domain: str) -> list[str]:
        """A trial's job: the fixed overrides, the trial's, its domain; it scores the dev part only."""
        return [*self.space.fixed, *overrides, f"domain={domain}", TRIAL_SCORES]

    def command(self, stage: str) -> str:
        """The command that started this sweep (Hydra and task overrides as typed) for another `stage`."""
        overrides = self.config.hydra.overrides
        typed = [o for o in overrides.hydra if not str(o).startswith("hydra.mode=")]  # Hydra adds it for -m
        task = [o for o in overrides.task if not str(o).startswith("search.stage=")]
        words = [*typed, *task, *([f"search.stage={stage}"] if stage != "trials" else [])]
        return " ".join(["feclip run -m", *(shlex.quote(str(w)) for w in words)])


def _options(group: str) -> list[str]:
    return GlobalHydra.instance().config_loader().get_group_options(group)


def plan(config: DictConfig) -> Plan:
    """Everything a search can check before any work, as one-line `FeclipError`s: the config
    (`feclip.config.validate`), the space, each parameter value composed and validated, the study."""
    if OmegaConf.select(config, "search.params") is None:
        raise SearchError(
            "hydra/sweeper=search needs a search space (search.params); expected "
            f"search=<{'|'.join(o for o in _options('search') if o != 'base')}>"
        )
    validate(config)
    if OmegaConf.select(config, "eval.split") is None:
        raise SearchError(
            f"a search selects on the study split's dev part; expected eval=hdmap (eval.split), not "
            f"eval={config.hydra.runtime.choices.eval}"
        )
    if config.tracking.skip_finished:
        raise SearchError(
            "tracking.skip_finished=true is not allowed with a search; expected false (the study resumes "
            "the search: trials it has told are not run again)"
        )
    space = build_space(config.search, [str(o) for o in config.hydra.overrides.task], config.domain.name)
    if SAMPLERS.get_entry(config.search.sampler).discrete:
        space.grid()
    probe(config, space)
    cwd = Path(str(config.hydra.runtime.cwd))
    folder = writable_folder(cwd / str(config.search.dir), "search.dir").resolve()
    found = Plan(config, space, folder, sweep_dir_of(config).resolve())
    if config.search.stage == "confirm":
        pick(load_study(folder, config.search.name, found.identity()))
        baseline = list(config.search.confirm.baseline)
        problem = _problem(config, space, baseline, trial=False)
        if problem is not None:
            raise SearchError(f"search.confirm.baseline={baseline} cannot run: {problem}")
    else:
        check_free(folder, config.search.name, found.identity())
    return found


def _probe_values(dist: BaseDistribution) -> list:
    """A categorical's every choice; a numeric range's bounds."""
    return list(dist.choices) if isinstance(dist, CategoricalDistribution) else [dist.low, dist.high]


def _problem(config: DictConfig, space: Space, lines: list[str], *, trial: bool = True) -> str | None:
    """Why a job with these overrides (a trial's, else the confirm stage's) cannot run (composition,
    validation), else None."""
    overrides = [*space.fixed, *lines, f"domain={space.domains[0]}", *([TRIAL_SCORES] if trial else [])]
    try:
        validate(GlobalHydra.instance().config_loader().load_sweep_config(config, overrides))
    except (HydraException, OmegaConfBaseException, FeclipError) as error:
        return cli.one_line(error)
    return None


def probe(config: DictConfig, space: Space) -> None:
    """Compose and validate a job config for each value of each parameter (each choice, an interval's
    bounds), all parameters at once (round i takes every parameter's i-th value): a value no job can run
    with is refused, by name, before the first trial. A failing round is probed value by value."""
    values = {name: _probe_values(dist) for name, dist in space.params.items()}
    for i in range(max(len(v) for v in values.values())):
        lines = [f"{name}={override_value(v[i % len(v)])}" for name, v in values.items()]
        if _problem(config, space, lines) is None:
            continue
        for line in lines:
            problem = _problem(config, space, [line])
            if problem is not None:
                raise SearchError(f"search parameter {line} cannot run: {problem}")
