"""What every job shares: the tracked run around its body, its tags, the random-init label."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from feclip import tracking

RANDOM_INIT_NOTE = "random-init backbone: numbers test the pipeline, not FE-CLIP"

Body = Callable[[DictConfig, Path, tracking.Tracker], dict[str, float]]


def job_tags(cfg: DictConfig, job: tracking.JobInfo) -> dict[str, str]:
    return {
        "domain": cfg.domain.name if cfg.eval.protocol == "hdmap" else "-",
        "variant": job.variant,
        "seed": str(cfg.seed),
        "backbone": cfg.backbone.name,
        "mode": cfg.mode,
        "feclip.random_init": str(cfg.backbone.pretrained is None).lower(),
        **{f"choice.{group}": str(option) for group, option in job.choices.items() if "/" not in group},
    }


def tracked_job(cfg: DictConfig, output_dir: Path, job: tracking.JobInfo, body: Body) -> dict[str, float]:
    """Run `body(cfg, output_dir, tracker) -> metrics` inside an MLflow run; files first, then logging."""
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    if cfg.tracking.enabled:
        tracking.check_tracking_uri(uri)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tracker = tracking.Tracker(
        uri,
        cfg.tracking.experiment,
        job.run_name,
        job_tags(cfg, job),
        parent_run_id=job.parent_run_id,
        enabled=cfg.tracking.enabled,
    )
    with tracker:
        tracker.log_params(tracking.flatten_config(OmegaConf.to_container(cfg, resolve=True)))
        metrics = body(cfg, output_dir, tracker)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tracker.log_metrics(metrics)
        tracker.log_artifacts(output_dir)
    return metrics
