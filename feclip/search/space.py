"""A search space: the `search` config node (feclip/conf/search/<space>.yaml) and the sweep overrides of the
command line, as Optuna distributions and as the overrides of a trial's jobs.

    search.params: {model.lam: interval(0.05, 0.5), freq: choice(dct, dct_abs),
                    train.lr: tag(log, interval(1e-4, 3e-3))}

Hydra's override grammar: `choice(...)` and `range(...)` are discrete (every sampler), `interval(a, b)`
continuous (`tag(log, interval(...))` on a log scale; integer bounds give integers; not for `grid`). On the
command line a sweep override (`model.lam=interval(0.2,0.4)`) adds or replaces a parameter and a plain one
(`model.lam=0.3`) fixes it; `domain` is never searched: each trial runs one job per domain of
`search.domains`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer, ValueType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from feclip.cli import override_key
from feclip.errors import FeclipError
from feclip.registry import Registry, choices


class SearchError(FeclipError):
    """A search space, objective or study that cannot be used; the message names the key and what was
    expected."""


class GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell: the sweep stops at the grid's size itself (`Space.size`);
    the sampler's own stop, allowed only inside `Study.optimize`, is left out."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


@dataclass(frozen=True)
class Sampler:
    """An Optuna sampler: `discrete` (every parameter must be a choice or a range), `build(grid, seed,
    n_jobs)`; grid: {name: its values} of a discrete space, else None."""

    discrete: bool
    build: Callable[[dict | None, int, int], optuna.samplers.BaseSampler]


SAMPLERS: Registry[Sampler] = Registry(
    "search sampler",
    key="search.sampler",
    entries={
        # constant_liar: a batch of parallel trials does not ask the same point n_jobs times
        "tpe": Sampler(
            False, lambda grid, seed, n: optuna.samplers.TPESampler(seed=seed, constant_liar=n > 1)
        ),
        "random": Sampler(False, lambda grid, seed, n: optuna.samplers.RandomSampler(seed=seed)),
        "grid": Sampler(True, lambda grid, seed, n: GridSampler(grid, seed=seed)),
    },
)


@dataclass(frozen=True)
class Aggregate:
    """How the domains of a trial make its objective values: `reduce` (values over domains -> one), or None:
    one objective per domain (multi-objective)."""

    reduce: Callable[[Sequence[float]], float] | None


AGGREGATES: Registry[Aggregate] = Registry(
    "domain aggregate",
    key="search.aggregate",
    entries={
        "mean": Aggregate(lambda values: float(np.mean(values))),
        "min": Aggregate(lambda values: float(np.min(values))),
        "each": Aggregate(None),
    },
)
DIRECTIONS = choices("search direction", "search.direction", ("maximize", "minimize"))
STAGES = choices("search stage", "search.stage", ("trials", "confirm"))
DEV_PREFIX = "dev/"


def objective_metrics(objective: Any) -> tuple[str, ...]:
    """`search.objective` (one metric or a list) as a tuple of metric names."""
    values = list(objective) if isinstance(objective, (list, tuple, ListConfig)) else [objective]
    return tuple(str(v) for v in values)


def is_dev_objective(objective: Any) -> bool:
    """One `dev/<metric>`, or a non-empty list of them: what a search may select on."""
    metrics = objective_metrics(objective)
    return bool(metrics) and all(m.startswith(DEV_PREFIX) and len(m) > len(DEV_PREFIX) for m in metrics)


@dataclass(frozen=True)
class Space:
    """What a search varies and keeps: `params` {override key: distribution}, `fixed` the other task
    overrides (every job gets them), `domains` the domains every trial runs on."""

    params: dict[str, BaseDistribution]
    fixed: tuple[str, ...]
    domains: tuple[str, ...]

    def grid(self) -> dict[str, list]:
        """{name: its values}; a continuous parameter is a `SearchError` naming it."""
        return {name: grid_values(name, dist) for name, dist in self.params.items()}

    def size(self) -> int:
        """The number of points of a discrete space (the grid)."""
        return int(np.prod([len(values) for values in self.grid().values()]))


def _parse(lines: list[str], where: str) -> list[Override]:
    try:
        return OverridesParser.create().parse_overrides(lines)
    except HydraException as error:
        raise SearchError(f"{where}: {' '.join(str(error).split())}") from None


def distribution(override: Override, where: str) -> BaseDistribution:
    """The Optuna distribution of a sweep override: choice -> categorical (lists and dicts as their override
    text), range -> integers with its step (floats: categorical), interval -> int or float (log tag)."""
    if override.is_choice_sweep() and override.value_type != ValueType.GLOB_CHOICE_SWEEP:
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if override.is_range_sweep():
        values = list(override.sweep_iterator(transformer=Transformer.encode))
        if all(isinstance(v, int) for v in values) and len(values) > 1:
            return IntDistribution(min(values), max(values), step=abs(values[1] - values[0]))
        return CategoricalDistribution(values)
    if override.is_interval_sweep():
        interval = override.value()
        log = "log" in interval.tags
        if isinstance(interval.start, int) and isinstance(interval.end, int):
            return IntDistribution(interval.start, interval.end, log=log)
        return FloatDistribution(float(interval.start), float(interval.end), log=log)
    raise SearchError(
        f"{where}: {override.input_line or override.get_key_element()} is not a search parameter; expected "
        "choice(...), range(...) or interval(...) (tag(log, interval(...)) on a log scale)"
    )


def grid_values(name: str, dist: BaseDistribution) -> list:
    """The values a grid takes of one parameter (a choice's, a range's)."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution) and not dist.log:
        return list(range(dist.low, dist.high + 1, dist.step))
    raise SearchError(
        f"search.sampler=grid needs discrete parameters; {name} is continuous ({dist}); expected "
        "choice(...) or range(...), or search.sampler=tpe|random"
    )


def build_space(search: DictConfig, task_overrides: Sequence[str], domain: str) -> Space:
    """The space of `search.params` and the command line's sweep overrides; plain overrides are `fixed`
    (one naming a parameter fixes it). `domain` (the config's) is the domain when search.domains is null."""
    lines = [f"{key}={value}" for key, value in (search.params or {}).items()]
    params = {o.get_key_element(): distribution(o, "search.params") for o in _parse(lines, "search.params")}
    fixed = []
    for override in _parse(list(task_overrides), "the command line"):
        key = override.get_key_element()
        if key == "domain":
            if override.is_sweep_override():
                raise SearchError(
                    f"{override.input_line}: a search runs every trial on each domain of search.domains; "
                    f"expected search.domains=[{','.join(map(str, override.sweep_string_iterator()))}]"
                )
        elif override.is_sweep_override():
            params[key] = distribution(override, "the command line")
        else:
            params.pop(key, None)
            fixed.append(override.input_line)
    if not params:
        raise SearchError(
            "nothing to search: search.params is empty or the command line fixes each of its parameters; "
            "expected at least one parameter with choices or a range"
        )
    domains = search.domains if search.domains is not None else [domain]
    return Space(params, tuple(fixed), tuple(str(d) for d in domains))


def override_value(value: Any) -> str:
    """A sampled value as override text: `true`, `null`, `0.31`, `dct_abs`, `[1,5]` (choices of lists are
    kept as their override text)."""
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    return repr(value) if isinstance(value, float) else str(value)


def param_overrides(params: dict[str, Any]) -> list[str]:
    """A trial's parameters as overrides: `model.lam=0.31`, `freq=dct_abs`."""
    return [f"{key}={override_value(value)}" for key, value in params.items()]


def identity(search: DictConfig, space: Space) -> dict:
    """What makes two commands the same search (a study is resumed only by its own): the fixed overrides
    (bar the search's budget and stage), the parameters, objective, direction, domains and aggregate."""
    fixed = sorted(o for o in space.fixed if not override_key(o).startswith("search."))
    return {
        "overrides": fixed,
        "params": {name: repr(dist) for name, dist in sorted(space.params.items())},
        "objective": list(objective_metrics(search.objective)),
        "direction": search.direction,
        "domains": list(space.domains),
        "aggregate": search.aggregate,
    }


def objective_names(search: DictConfig, domains: Sequence[str]) -> list[str]:
    """One name per Optuna objective, in the order of `trial_values`: `dev/acc_fa1_cold C`,
    `dev/acc_fa1_cold mean(A,C)`; aggregate=each: one per metric and domain."""
    metrics = objective_metrics(search.objective)
    if AGGREGATES.get_entry(search.aggregate).reduce is None or len(domains) == 1:
        return [f"{m} {d}" for m in metrics for d in domains]
    return [f"{m} {search.aggregate}({','.join(domains)})" for m in metrics]
