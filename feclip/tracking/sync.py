"""Log finished job folders into a tracking store afterwards: `python -m feclip.tracking sync <folder>`.

A job folder (`feclip.tracking.local`) holds everything its run would: params (config.yaml), per-epoch
metrics with their steps (history.csv), final metrics (metrics.json), tags and status (run.json) and the
artifacts (the files). `sync_job` finds the job's run in the store by its job id (tag `feclip.job_id`) or
creates it, then adds only what is missing: run twice, or after a job that lost its server halfway, the store
holds exactly one complete run. A sweep folder (with sweep.json) syncs its parent run (found by the sweep's
key, tag `feclip.sweep_key`, or created) and every job under it, nested.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from omegaconf import OmegaConf

from feclip.tracking.local import (
    ATTEMPTS_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    RUN_FILE,
    SWEEP_FILE,
    job_folders,
    read_history,
    read_json,
    update_run,
)
from feclip.tracking.sweep import close_parent, parent_tags, sweep_outcome
from feclip.tracking.tracker import (
    MAX_PARAM_LENGTH,
    MAX_TAG_LENGTH,
    METRICS_PER_BATCH,
    NONFINITE_TAG,
    PARAMS_PER_BATCH,
    PARENT_TAG,
    batches,
    client_for,
    experiment_id,
    flatten_config,
    param_key,
    search_all_runs,
    truncate,
)
from feclip.tracking.uris import TrackingError, check_tracking_uri, resolve_tracking_uri


def _find(client, exp_id: str, tag: str, value: str):
    runs = search_all_runs(client, [exp_id], f"tags.`{tag}` = '{value}'")
    return runs[0] if runs else None


def _artifact_paths(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for item in client.list_artifacts(run_id, path):
        found |= _artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return found


def _log_missing_params(client, run, folder: Path) -> None:
    """The params the job logs (run.json `params`: what its method reads), or for a folder of an older job
    its whole config.yaml."""
    from mlflow.entities import Param

    logged = read_json(folder / RUN_FILE).get("params")
    config = logged if logged is not None else OmegaConf.to_container(OmegaConf.load(folder / CONFIG_FILE))
    params = {param_key(k): truncate(v, MAX_PARAM_LENGTH) for k, v in flatten_config(config).items()}
    missing = [Param(k, v) for k, v in params.items() if k not in run.data.params]
    for batch in batches(missing, PARAMS_PER_BATCH):
        client.log_batch(run.info.run_id, params=batch)


def _log_missing_metrics(client, run, folder: Path, timestamp: int) -> None:
    from mlflow.entities import Metric

    run_id, logged = run.info.run_id, {}
    entries = []
    for step, name, value in read_history(folder):
        if name not in logged:
            logged[name] = {m.step for m in client.get_metric_history(run_id, name)}
        if step not in logged[name] and math.isfinite(value):
            entries.append(Metric(param_key(name), value, timestamp, step))
    final = read_json(folder / METRICS_FILE)["metrics"] if (folder / METRICS_FILE).exists() else {}
    entries += [
        Metric(param_key(k), float(v), timestamp, 0)
        for k, v in final.items()
        if v is not None and param_key(k) not in run.data.metrics
    ]
    for batch in batches(entries, METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=batch)
    undefined = sorted(param_key(k) for k, v in final.items() if v is None)
    if undefined:
        client.set_tag(run_id, NONFINITE_TAG, truncate(",".join(undefined), MAX_TAG_LENGTH))


def _image_keys(present: set[str]) -> set[str]:
    """The keys of the run's logged images (`images/<key>+step+...`, older MLflow `%step%`)."""
    return {re.split(r"[+%]step[+%]", Path(p).name)[0] for p in present if p.startswith("images/")}


def _log_missing_artifacts(client, run_id: str, folder: Path) -> None:
    """The folder's files the run lacks, each once: those run.json lists as `images` as MLflow images keyed
    by file stem (as the job logs them), the others as artifacts; never the archived earlier attempts."""
    present = _artifact_paths(client, run_id)
    images, keys = set(read_json(folder / RUN_FILE).get("images", [])), _image_keys(present)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        relative = path.relative_to(folder)
        if relative.parts[0] == ATTEMPTS_DIR:
            continue
        if relative.as_posix() in images:
            if path.stem not in keys:
                from PIL import Image

                with Image.open(path) as image:
                    client.log_image(run_id, image.copy(), key=path.stem)
        elif str(relative) not in present:
            parent = str(relative.parent) if str(relative.parent) != "." else None
            client.log_artifact(run_id, str(path), parent)


def sync_job(folder: Path, uri: str, parent_run_id: str | None = None) -> str | None:
    """Log one job folder into `uri` (idempotent); returns the run id (None for a skipped job)."""
    from mlflow.entities import RunTag

    record = read_json(folder / RUN_FILE)
    if record.get("status") == "SKIPPED":
        return None
    client = client_for(uri)
    exp_id = experiment_id(client, record["experiment"])
    tags = {**record.get("tags", {}), "feclip.job_id": record["job_id"]}
    if parent_run_id:
        tags[PARENT_TAG] = parent_run_id
    run = _find(client, exp_id, "feclip.job_id", record["job_id"])
    if run is None:
        run = client.create_run(exp_id, run_name=record["run_name"], tags=tags)
    client.log_batch(run.info.run_id, tags=[RunTag(k, truncate(v, MAX_TAG_LENGTH)) for k, v in tags.items()])
    run = client.get_run(run.info.run_id)
    _log_missing_params(client, run, folder)
    _log_missing_metrics(client, run, folder, int(1000 * record.get("ended", record.get("updated", 0))))
    _log_missing_artifacts(client, run.info.run_id, folder)
    status = record.get("status", "FAILED")
    if status == "RUNNING":  # the job died without a word (SIGKILL, power): never FINISHED
        status, record["reason"] = "FAILED", "the job folder was left RUNNING (the process died)"
    if record.get("reason"):
        client.set_tag(run.info.run_id, "failure_reason", truncate(record["reason"], MAX_TAG_LENGTH))
    if client.get_run(run.info.run_id).info.status != status:
        client.set_terminated(run.info.run_id, status)
    update_run(folder, synced=True, synced_to=uri, synced_run_id=run.info.run_id)
    return run.info.run_id


def _parent(client, sweep_dir: Path) -> str:
    """The sweep's parent run in this store (found by the sweep key, else created)."""
    sweep = read_json(sweep_dir / SWEEP_FILE)
    exp_id = experiment_id(client, sweep["experiment"])
    found = _find(client, exp_id, "feclip.sweep_key", sweep["key"])
    if found is not None:
        return found.info.run_id
    tags = parent_tags(sweep["sweep_id"], sweep_dir, sweep.get("overrides", []), sweep["key"])
    return client.create_run(exp_id, run_name=f"sweep {sweep['sweep_id']}", tags=tags).info.run_id


def sync(folder: str | Path, uri: str | None = None) -> list[str]:
    """Sync a job folder or a sweep folder into `uri` (default: the store the job was tracked in, else
    MLFLOW_TRACKING_URI or sqlite:///mlflow.db); returns the run ids."""
    folder = Path(folder)
    sweep_dir = folder if (folder / SWEEP_FILE).exists() else None
    jobs = job_folders(folder) if sweep_dir else [folder]
    if not jobs or not all((job / RUN_FILE).exists() for job in jobs):
        raise TrackingError(
            f"{folder} holds no feclip job ({RUN_FILE}) or sweep ({SWEEP_FILE}); "
            "expected a job folder or a multirun folder"
        )
    if sweep_dir is None and (folder.parent / SWEEP_FILE).exists():
        sweep_dir = folder.parent
    records = [read_json(job / RUN_FILE) for job in jobs]  # every record readable before the store is touched
    target = resolve_tracking_uri(uri or records[0].get("tracking_uri"))
    check_tracking_uri(target)
    client = client_for(target)
    parent = _parent(client, sweep_dir) if sweep_dir else None
    run_ids = [run_id for job in jobs if (run_id := sync_job(job, target, parent))]
    if parent and folder == sweep_dir:
        close_parent(client, parent, sweep_outcome(sweep_dir), aborted=False)
    return run_ids
