"""Hydra's handle on feclip's hyperparameter search: `hydra/sweeper=search`
(feclip/conf/hydra/sweeper/search.yaml).

Hydra instantiates only sweepers found in the `hydra_plugins` namespace package, which it imports module by
module at every start (`hydra.core.plugins.Plugins`): this module stays light, and the search itself
(Optuna, the study, the trials: `feclip.search`) is imported when a sweep starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class SearchSweeper(Sweeper):
    """Optuna trials over `search.params`; the launcher runs each trial's jobs (`feclip.search`)."""

    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.launcher = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: Sequence[str]) -> Any:
        """`arguments`: the task overrides; the search reads them from `config.hydra.overrides.task`."""
        from feclip.search.sweeper import sweep

        return sweep(self.config, self.launcher)

    @staticmethod
    def check(config: DictConfig) -> None:
        """Raise a one-line `FeclipError` if the search would be refused (called before the sweep's parent run
        and folder exist, by `feclip.tracking.sweep.MlflowSweepCallback`)."""
        from feclip.search.plan import plan

        plan(config)
