"""The jobs a config can ask for: `mode` (train_eval | predict) and, for train_eval, `eval.protocol`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from omegaconf import DictConfig

from feclip.jobs.benchmark import benchmark_job
from feclip.jobs.common import Body
from feclip.jobs.predict import predict_job
from feclip.jobs.train_eval import hdmap_job
from feclip.registry import Registry


@dataclass(frozen=True)
class Job:
    body: Body
    headline: str  # the metric `run.main` returns (a Hydra sweeper may optimise it)


PROTOCOLS: Registry[Job] = Registry(
    "evaluation protocol",
    key="eval.protocol",
    entries={"hdmap": Job(hdmap_job, "auroc"), "benchmark": Job(benchmark_job, "image_auroc")},
)
MODES: Registry[Callable[[DictConfig], Job]] = Registry(
    "job mode",
    key="mode",
    entries={
        "train_eval": lambda cfg: PROTOCOLS.get_entry(cfg.eval.protocol),
        "predict": lambda cfg: Job(predict_job, "n_flagged"),
    },
)


def job_for(cfg: DictConfig) -> Job:
    return MODES.get_entry(cfg.mode)(cfg)
