"""The parent run of a Hydra multirun (`MlflowSweepCallback`, configured in `hydra.callbacks`): it creates the
parent run and writes its id to `<sweep dir>/mlflow_parent.json`; jobs, in any process or on any node, find it
with `parent_run_id_for_sweep`. No job relies on in-process state."""

from __future__ import annotations

import atexit
import functools
import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from feclip.tracking.tracker import (
    MAX_TAG_LENGTH,
    PARENT_TAG,
    client_for,
    experiment_id,
    search_all_runs,
    truncate,
)
from feclip.tracking.uris import TrackingError, check_tracking_uri, one_line, resolve_tracking_uri

PARENT_FILE = "mlflow_parent.json"


def parent_file(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / PARENT_FILE


def parent_run_id_for_sweep(sweep_dir: str | Path) -> str | None:
    """The parent run id written by `MlflowSweepCallback` into `<sweep_dir>/mlflow_parent.json`, else None."""
    path = parent_file(sweep_dir)
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (ValueError, KeyError, TypeError) as error:
        raise TrackingError(
            f"{path} is not a parent-run record ({error!r}); expected JSON with 'run_id'"
        ) from None


def sweep_id_for(sweep_dir: str | Path) -> str:
    """Short, readable id of a sweep folder: its last two path parts (`2025-11-28/23-50-01`)."""
    return "/".join(Path(sweep_dir).parts[-2:])


def _sweep_dir(config: DictConfig) -> Path:
    """Absolute `hydra.sweep.dir` (resolved from the same config object, so `${now:}` matches the jobs')."""
    sweep_dir = Path(str(config.hydra.sweep.dir))
    return sweep_dir if sweep_dir.is_absolute() else Path(str(config.hydra.runtime.cwd)) / sweep_dir


def _tracking_settings(config: DictConfig) -> tuple[bool, str, str]:
    """(enabled, resolved uri, experiment) from the composed `tracking.*` keys."""
    experiment = OmegaConf.select(config, "tracking.experiment", default=None)
    if experiment is None:
        raise TrackingError("config key tracking.experiment is missing; MlflowSweepCallback needs tracking.*")
    enabled = bool(OmegaConf.select(config, "tracking.enabled", default=True))
    uri = resolve_tracking_uri(
        OmegaConf.select(config, "tracking.uri", default=None), config.hydra.runtime.cwd
    )
    return enabled, uri, str(experiment)


class MlflowSweepCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun; child jobs nest under it via `mlflow.parentRunId`.

    The run id travels through `<hydra.sweep.dir>/mlflow_parent.json`, so jobs in worker processes or SLURM
    nodes find it. If the sweep aborts (a job raised, Ctrl-C) Hydra skips `on_multirun_end`; an exit hook
    then ends the parent run FAILED.
    """

    def __init__(self) -> None:
        self._exit_hook = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        enabled, uri, experiment = _tracking_settings(config)
        if not enabled:
            return
        check_tracking_uri(uri)
        sweep_dir = _sweep_dir(config)
        sweep_id = sweep_id_for(sweep_dir)
        client = client_for(uri)
        overrides = OmegaConf.select(config, "hydra.overrides.task", default=[]) or []
        tags = {
            "sweep_id": sweep_id,
            "feclip.parent": "true",
            "sweep_dir": str(sweep_dir),
            "sweep_overrides": truncate(" ".join(map(str, overrides)), MAX_TAG_LENGTH),
        }
        run = client.create_run(experiment_id(client, experiment), run_name=f"sweep {sweep_id}", tags=tags)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "run_id": run.info.run_id,
            "tracking_uri": uri,
            "experiment": experiment,
            "sweep_id": sweep_id,
        }
        parent_file(sweep_dir).write_text(json.dumps(record, indent=2))
        self._exit_hook = functools.partial(_end_aborted_sweep, sweep_dir)
        atexit.register(self._exit_hook)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None
        end_parent_run(_sweep_dir(config))


def _end_aborted_sweep(sweep_dir: Path) -> None:
    """Exit hook: end a parent run left RUNNING by an aborted sweep; never raise at interpreter exit."""
    try:
        end_parent_run(sweep_dir, aborted=True)
    except Exception as error:
        print(f"feclip: could not end the sweep's parent run: {one_line(error, 200)}", file=sys.stderr)


def end_parent_run(sweep_dir: str | Path, aborted: bool = False) -> str | None:
    """End the sweep's parent run (if still running): FINISHED when every child finished, else FAILED.

    Child counts go to tags `feclip.children_finished` / `feclip.children_other`. Returns the status set.
    """
    path = parent_file(sweep_dir)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    client = client_for(record["tracking_uri"])
    parent = client.get_run(record["run_id"])
    if parent.info.status != "RUNNING":
        return None
    children = search_all_runs(
        client, [parent.info.experiment_id], f"tags.`{PARENT_TAG}` = '{record['run_id']}'"
    )
    finished = sum(child.info.status == "FINISHED" for child in children)
    client.set_tag(record["run_id"], "feclip.children_finished", str(finished))
    client.set_tag(record["run_id"], "feclip.children_other", str(len(children) - finished))
    if aborted:
        client.set_tag(
            record["run_id"],
            "failure_reason",
            "sweep ended without on_multirun_end (a job raised or the sweep was interrupted)",
        )
    status = "FAILED" if aborted or finished < len(children) else "FINISHED"
    client.set_terminated(record["run_id"], status)
    return status
