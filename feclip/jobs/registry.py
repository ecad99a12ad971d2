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
    key_metrics: tuple[str, ...] = ()  # shown in the job's closing block (the headline first)


PROTOCOLS: Registry[Job] = Registry(
    "evaluation protocol",
    key="eval.protocol",
    entries={
        "hdmap": Job(
            hdmap_job, "auroc", ("auroc_cold", "auroc_warm", "auroc_cross", "acc_val", "pixel_auroc")
        ),
        "benchmark": Job(benchmark_job, "image_auroc", ("image_ap", "pixel_auroc", "pro")),
    },
)
MODES: Registry[Callable[[DictConfig], Job]] = Registry(
    "job mode",
    key="mode",
    entries={
        "train_eval": lambda cfg: PROTOCOLS.get_entry(cfg.eval.protocol),
        "predict": lambda cfg: Job(predict_job, "n_flagged", ("n_images",)),
    },
)


def job_for(cfg: DictConfig) -> Job:
    return MODES.get_entry(cfg.mode)(cfg)
