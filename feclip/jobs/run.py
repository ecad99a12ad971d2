"""One job: validate the config, make its paths absolute, check where it will write, then run the job
`mode` / `eval.protocol` ask for in one tracked run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from feclip import config
from feclip.evaluation.predictor import predict_identity
from feclip.files import writable_folder
from feclip.jobs.common import launch_dir, tracked_job
from feclip.jobs.registry import Job, job_for
from feclip.jobs.train_eval import scored_parts
from feclip.methods.registry import job_reads
from feclip.tracking import JobInfo
from feclip.tracking.artifacts import with_local_checkpoint


def predict_job_info(cfg: DictConfig, job: JobInfo) -> JobInfo:
    """A predict run is named by the model it applies: `<domain>-predict-<method>` (variant `predict`)."""
    identity = predict_identity(cfg)
    return replace(job, run_name=f"{identity['domain']}-predict-{identity['method']}", variant="predict")


def check_outputs(cfg: DictConfig, output_dir: Path) -> None:
    """Every folder the job will write to exists (or is created) and takes files, before any work: the job
    folder, the disk token cache, predict.out; else a one-line error naming the config key."""
    writable_folder(output_dir, "hydra.run.dir")
    if OmegaConf.select(cfg, "train.token_cache", default=None) == "disk":
        writable_folder(cfg.cache_dir, "cache_dir")
    if cfg.mode == "predict" and cfg.predict.out:
        writable_folder(cfg.predict.out, "predict.out")


def shown_metrics(cfg: DictConfig, kind: Job) -> tuple[str, ...]:
    """The job's headline and key metrics, of the dev part for a job that scores no test part (a search's
    trial, `eval.split.score=[dev]`)."""
    names = (kind.headline, *kind.key_metrics)
    hdmap = cfg.mode == "train_eval" and cfg.eval.protocol == "hdmap"
    return names if not hdmap or "test" in scored_parts(cfg) else tuple(f"dev/{name}" for name in names)


def main(cfg: DictConfig, output_dir: Path | None = None, job: JobInfo | None = None) -> float | None:
    """Validate, run, return the job's headline metric (None when it has none; of the dev part when the job
    scores no test part)."""
    metrics, headline = run(cfg, output_dir, job)
    return metrics.get(headline)


def run(
    cfg: DictConfig, output_dir: Path | None = None, job: JobInfo | None = None
) -> tuple[dict[str, float], str]:
    """Validate and run the job: its metrics (those of the run it repeats when it was folded or skipped) and
    the name of its headline metric. Relative paths in the config mean the launch directory, so a job runs
    the same from its own folder (`hydra.job.chdir=true`)."""
    config.validate(cfg)
    kind = job_for(cfg)
    output_dir = (output_dir or Path(HydraConfig.get().runtime.output_dir)).resolve()
    job = job or JobInfo.from_hydra(cfg, reads=job_reads(cfg))
    cfg = with_local_checkpoint(config.absolute_paths(cfg, launch_dir()), output_dir)
    check_outputs(cfg, output_dir)
    if cfg.mode == "predict":
        job = predict_job_info(cfg, job)
    shown = shown_metrics(cfg, kind)
    return tracked_job(cfg, output_dir, job, kind.body, key_metrics=shown), shown[0]
