"""What every job shares: the tracked run around its body, its tags, the random-init label."""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from feclip import tracking
from feclip.evaluation.metrics import MetricWarning
from feclip.methods.registry import METHODS

RANDOM_INIT_NOTE = "random-init backbone: numbers test the pipeline, not FE-CLIP"

Body = Callable[[DictConfig, Path, tracking.Tracker], dict[str, float]]


def random_init(cfg: DictConfig) -> bool:
    """Whether the job's method runs on random backbone weights (its numbers then test the pipeline)."""
    return METHODS.get_entry(cfg.method.name).config_random_init(cfg)


def metrics_record(metrics: dict[str, float], *, random_init: bool, notes: list[str]) -> dict:
    """metrics.json: valid JSON (a metric undefined on this data is null, its reason under `undefined`),
    the random-init flag and the job's metric warnings."""
    undefined = {}
    for name, value in metrics.items():
        if not math.isfinite(value):
            subset = name.split("_", 1)[1] if "_" in name else "all"
            related = [note for note in notes if f"'{subset}'" in note]
            undefined[name] = "; ".join(related or notes) or "not defined on this data"
    record = {
        "metrics": {k: (v if math.isfinite(v) else None) for k, v in sorted(metrics.items())},
        "undefined": undefined,
        "random_init": random_init,
    }
    if random_init:
        record["note"] = RANDOM_INIT_NOTE
    return {**record, "warnings": notes}


@contextlib.contextmanager
def metric_warnings() -> Iterator[list[str]]:
    """Collect the messages of MetricWarnings (undefined metrics) while still showing every warning."""
    notes: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("always", MetricWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, MetricWarning):
                notes.append(str(message))
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield notes


def job_tags(cfg: DictConfig, job: tracking.JobInfo) -> dict[str, str]:
    return {
        "domain": cfg.domain.name if cfg.eval.protocol == "hdmap" else "-",
        "variant": job.variant,
        "seed": str(cfg.seed),
        "backbone": cfg.backbone.name,
        "mode": cfg.mode,
        "feclip.random_init": str(random_init(cfg)).lower(),
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
        with metric_warnings() as notes:
            metrics = body(cfg, output_dir, tracker)
        record = metrics_record(metrics, random_init=random_init(cfg), notes=notes)
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=2, allow_nan=False))
        tracker.log_metrics(metrics)
        tracker.log_artifacts(output_dir)
    return metrics
