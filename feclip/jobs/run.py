"""One job: validate the config, then run the job `mode` / `eval.protocol` ask for in one tracked run."""

from __future__ import annotations

from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from feclip import config
from feclip.jobs.common import tracked_job
from feclip.jobs.registry import job_for
from feclip.tracking import JobInfo
from feclip.tracking.artifacts import with_local_checkpoint


def main(cfg: DictConfig, output_dir: Path | None = None, job: JobInfo | None = None) -> float | None:
    """Validate, run, return the job's headline metric (None when it has none)."""
    config.validate(cfg)
    kind = job_for(cfg)
    output_dir = output_dir or Path(HydraConfig.get().runtime.output_dir)
    cfg = with_local_checkpoint(cfg, output_dir)
    metrics = tracked_job(cfg, output_dir, job or JobInfo.from_hydra(cfg), kind.body)
    return metrics.get(kind.headline)
