"""What every job shares: the tracked run around its body (files first), its tags and params (only what its
method reads: `feclip.identity`), the random-init label, clean ends on signals, skipping jobs that already
finished, and folding a sweep's jobs that compute what another of its jobs computes."""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from feclip import progress, tracking
from feclip.cache import resolve_cap, size_bytes
from feclip.cli import one_line, signals_as_exceptions
from feclip.data.sources import AUX_SOURCES
from feclip.errors import note
from feclip.evaluation.metrics import MetricWarning
from feclip.evaluation.predictor import predict_identity
from feclip.files import write_text
from feclip.identity import COMPUTE, Reads, identity_hash, relevant, variant_label
from feclip.methods.registry import METHODS, job_reads
from feclip.progress import job_label
from feclip.runtime import compute_identity
from feclip.tracking.local import (
    ATTEMPTS_DIR,
    CONFIG_FILE,
    METRICS_FILE,
    RUN_FILE,
    append_history,
    archive_attempt,
    process_identity,
    read_json,
    update_run,
    write_json,
)
from feclip.tracking.tracker import end_status, failure_reason

RANDOM_INIT_NOTE = "random-init backbone: numbers test the pipeline, not FE-CLIP"

Body = Callable[[DictConfig, Path, "JobRecord"], dict[str, float]]


def config_identity(cfg: DictConfig) -> dict:
    """What a train/eval job computes with: method, domain, backbone, pretrained (weights: None, a tag or a
    file), random_init (its numbers then test the pipeline), device and precision (resolved)."""
    entry = METHODS.get_entry(cfg.method.name)
    device, precision = compute_identity(cfg)
    return {
        "method": cfg.method.name,
        "domain": cfg.domain.name if cfg.eval.protocol == "hdmap" else "-",
        "backbone": entry.config_backbone(cfg),
        "pretrained": entry.config_weights(cfg),
        "random_init": entry.config_random_init(cfg),
        "device": device,
        "precision": precision,
    }


def job_identity(cfg: DictConfig) -> dict:
    """`config_identity`, or for mode=predict the saved model's (`predict_identity`): a predict run is
    labelled by the model it applies, not by the default config."""
    return predict_identity(cfg) if cfg.mode == "predict" else config_identity(cfg)


def metrics_record(
    metrics: dict[str, float], *, random_init: bool, notes: list[str], facts: dict | None = None
) -> dict:
    """metrics.json: valid JSON (a metric undefined on this data is null, its reason under `undefined`),
    the random-init flag, the job's `facts` (e.g. deployable) and its metric warnings."""
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
    return {**record, **(facts or {}), "warnings": notes}


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


def job_tags(cfg: DictConfig, job: tracking.JobInfo, identity: dict | None = None) -> dict[str, str]:
    """The run's tags: what it computed with, its variant, its identity (`feclip.config_hash`), the training
    source's facts and the chosen option of each config group its method reads (`choice.<group>`)."""
    identity, reads = identity or job_identity(cfg), job_reads(cfg)
    aux = AUX_SOURCES.get_entry(cfg.aux.source).tags(cfg) if reads.covers("aux.source") else {}
    return {
        **{key: str(identity[key]) for key in ("domain", "backbone", "device", "precision", "method")},
        "variant": job.variant,
        "seed": str(cfg.seed),
        "mode": cfg.mode,
        "feclip.random_init": str(identity["random_init"]).lower(),
        "feclip.config_hash": config_hash(cfg, identity),
        **aux,
        **{
            f"choice.{group}": str(option)
            for group, option in job.choices.items()
            if "/" not in group and (group == "experiment" or reads.touches(group))
        },
    }


def _computed(cfg: DictConfig, identity: dict) -> dict:
    """The resolved config with device and precision as the job resolves them (`auto` -> what it is)."""
    content = OmegaConf.to_container(cfg, resolve=True)
    content.pop("hydra", None)
    return {**content, **{key: identity[key] for key in COMPUTE}}


def config_hash(cfg: DictConfig, identity: dict | None = None) -> str:
    """16 hex digits of what the job computes: the keys its method reads and the shared ones, device and
    precision resolved (`feclip.identity`). Equal for re-runs of the same job (`tracking.skip_finished`) and
    for jobs that differ only in keys their method does not read (a sweep folds them: `fold`)."""
    return identity_hash(_computed(cfg, identity or job_identity(cfg)), job_reads(cfg))


def job_params(cfg: DictConfig, reads: Reads, identity: dict) -> dict:
    """The params a run logs: the config its method reads, the shared keys, device and precision."""
    return tracking.flatten_config(relevant(_computed(cfg, identity), reads))


class JobRecord:
    """What a job body records: written to the job folder as soon as it exists, mirrored to MLflow."""

    def __init__(
        self, folder: Path, tracker: tracking.Tracker, *, random_init: bool, notes: list[str], title: str = ""
    ):
        self.folder, self.tracker, self.random_init, self.notes = folder, tracker, random_init, notes
        self.title = title  # figure titles: domain · variant [· random-init]
        self.metrics: dict[str, float] = {}
        self.facts: dict = {}  # written to metrics.json beside the metrics

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Per-epoch values (`step`) go to history.csv; final metrics to metrics.json (rewritten as more
        arrive, each value logged to MLflow once)."""
        if step is not None:
            append_history(self.folder, step, metrics)
            self.tracker.log_metrics(metrics, step=step)
            return
        new = {k: v for k, v in metrics.items() if self.metrics.get(k, object()) != v}
        self.metrics.update(metrics)
        record = metrics_record(
            self.metrics, random_init=self.random_init, notes=self.notes, facts=self.facts
        )
        write_json(self.folder / METRICS_FILE, record)
        self.tracker.log_metrics(new)

    def mark_deployable(self, label_reads: list[str]) -> None:
        """Whether the run's decisions could be deployed (nothing in it reads the labels of the images it
        scores): tags `deployable` (+ `deployable_reason`), metrics.json, the closing block."""
        self.facts.update(deployable=not label_reads, not_deployable_because=label_reads)
        reason = {"deployable_reason": "; ".join(label_reads)} if label_reads else {}
        self.set_tags({"deployable": str(not label_reads).lower(), **reason})

    def set_tags(self, tags: dict[str, str]) -> None:
        if tags:
            previous = read_json(self.folder / RUN_FILE).get("tags", {})
            update_run(self.folder, tags={**previous, **tags})
            self.tracker.set_tags(tags)

    def log_artifacts(self, directory: Path) -> None:
        self.tracker.log_artifacts(directory)

    def log_input(self, name: str, digest: str, source: str, *, context: str, profile: dict) -> None:
        """The dataset the job used, in run.json and as an MLflow dataset input."""
        inputs = read_json(self.folder / RUN_FILE).get("inputs", [])
        entry = {
            "name": name,
            "digest": digest,
            "source": str(source),
            "context": context,
            "profile": profile,
        }
        update_run(self.folder, inputs=[*inputs, entry])
        self.tracker.log_input(name, digest, source, context=context, profile=profile)

    def log_images(self, paths: list[Path]) -> None:
        """Figures (files in the job folder) as MLflow images keyed by file stem, compared side by side across
        runs. run.json lists them (`images`): the folder upload and `sync` send each file once, as its image,
        never again as an artifact."""
        listed = read_json(self.folder / RUN_FILE).get("images", [])
        relative = [Path(path).relative_to(self.folder).as_posix() for path in paths]
        update_run(self.folder, images=sorted({*listed, *relative}))
        for path in paths:
            self.tracker.log_image(path, key=Path(path).stem)


def epoch_logger(record: JobRecord) -> Callable[[int, dict[str, float]], None]:
    """log_epoch(epoch, losses) for a method's fit: `train_<name>` values at step `epoch`."""

    def log_epoch(epoch: int, losses: dict[str, float]) -> None:
        record.log_metrics({f"train_{name}": value for name, value in losses.items()}, step=epoch)

    return log_epoch


FOLD_DIR = ".identities"  # <sweep dir>/.identities/<config hash>.json: the job of the sweep that computes it


def _claim(sweep_dir: Path, digest: str, record: dict) -> dict | None:
    """Claim `digest` for the job `record` describes: None when it is this job's (first claim, or its own
    from an earlier attempt), else the record of the job that holds it. The claim is a hard link, made
    atomically: of two jobs of one identity started at the same time (joblib, SLURM) exactly one runs."""
    folder = Path(sweep_dir) / FOLD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    claim, draft = folder / f"{digest}.json", folder / f".{digest}.{uuid.uuid4().hex}"
    draft.write_text(json.dumps(record))
    try:
        os.link(draft, claim)
        return None
    except FileExistsError:
        held = json.loads(claim.read_text())
        return None if held["job_folder"] == record["job_folder"] else held
    except OSError as error:  # a file system without hard links: run the job rather than guess
        note(f"cannot claim {claim} ({error.strerror or error}); job {record['job']} runs unfolded")
        return None
    finally:
        draft.unlink(missing_ok=True)


def fold(job: tracking.JobInfo, output_dir: Path, digest: str) -> dict | None:
    """In a sweep: the job of the same sweep that computes what this one does (the same `config_hash`: they
    differ only in keys their method does not read), with the grid point's overrides the method ignored
    (`axes`), or None when this job is the first of its identity and runs."""
    if not job.sweep_dir:
        return None
    record = {
        "job": output_dir.name,
        "job_folder": str(output_dir),
        "run_name": job.run_name,
        "overrides": list(job.overrides),
    }
    held = _claim(Path(job.sweep_dir), digest, record)
    if held is None:
        return None
    axes = [o for o in job.overrides if o not in held["overrides"]]
    return {**{key: held[key] for key in ("job", "job_folder", "run_name")}, "axes": axes}


def folded_metrics(folder: Path) -> dict[str, float]:
    """The metrics of the job a folded job is the same as, when it has finished (else {}: it still runs)."""
    record = read_json(folder / RUN_FILE) if (folder / RUN_FILE).exists() else {}
    if record.get("status") != "FINISHED" or not (folder / METRICS_FILE).exists():
        return {}
    values = read_json(folder / METRICS_FILE)["metrics"]
    return {k: (float("nan") if v is None else float(v)) for k, v in values.items()}


def finished_run(cfg: DictConfig, uri: str, digest: str):
    """A FINISHED run of this experiment with the same config hash, else None."""
    client = tracking.client_for(uri)
    exp_id = tracking.experiment_id(client, cfg.tracking.experiment, create=False)
    if exp_id is None:
        return None
    query = f"tags.`feclip.config_hash` = '{digest}' and attributes.status = 'FINISHED'"
    runs = tracking.search_all_runs(client, [exp_id], query)
    return runs[0] if runs else None


def cache_line(cfg: DictConfig) -> str | None:
    """`token cache: 1.23 GB in <dir> (cap 5 GB)` for a disk token cache, else None."""
    folder = Path(cfg.cache_dir)
    if OmegaConf.select(cfg, "train.token_cache", default=None) != "disk" or not folder.is_dir():
        return None
    cap = resolve_cap(cfg.train.cache_max_gb, folder)
    auto = ", auto: half the free disk" if cfg.train.cache_max_gb == "auto" else ""
    limit = (
        f" (cap {cap:.1f} GB{auto})"
        if cap
        else " (no cap: train.cache_max_gb; clear: python -m feclip.cache --clear --dir <dir>)"
    )
    return f"  token cache: {size_bytes(folder) / 1e9:.2f} GB in {folder}{limit}"


def closing_block(
    record: dict,
    metrics: dict[str, float],
    *,
    key_metrics: tuple[str, ...],
    tracker,
    cache: str | None = None,
) -> str:
    """The lines a job ends with: status and name, its key metrics, its folder, its MLflow run, the
    token cache's size."""
    seconds = record.get("ended", time.time()) - record.get("started", time.time())
    lines = [f"feclip job {record['run_name']}: {record['status']} in {seconds:.0f} s"]
    shown = [f"{name} {metrics[name]:.4f}" for name in key_metrics if name in metrics]
    if shown:
        flag = (
            " (random-init backbone: tests the pipeline)"
            if record.get("tags", {}).get("feclip.random_init") == "true"
            else ""
        )
        lines.append("  " + "  ".join(shown) + flag)
    if record.get("tags", {}).get("deployable") == "false":
        lines.append(f"  NOT DEPLOYABLE: {record['tags'].get('deployable_reason', '')}")
    lines.append(f"  folder: {record['job_folder']}")
    if cache:
        lines.append(cache)
    if tracker.run_id and tracker.lost is None:
        lines.append(f"  run:    {tracking.run_url(tracker.uri, tracker.experiment_id, tracker.run_id)}")
        command = tracking.ui_command(tracker.uri)
        if command:
            lines.append(f"  serve the UI: {command}")
    return "\n".join(lines)


def closing_line(
    record: dict, metrics: dict[str, float], *, headline: str | None, root: Path | None = None
) -> str:
    """A job's one line in a sweep: `✓ C-fft  auroc 0.7120  12 s  multirun/2026-12-07/10-00-00/3` (✗ and the
    reason for a failed or killed job); the folder relative to `root` (the launch directory) when under it.
    The sweep's closing lines carry the table, the parent run and how to serve the UI."""
    status = record["status"]
    seconds = record.get("ended", time.time()) - record.get("started", time.time())
    parts = [f"{progress.MARKS.get(status, '?')} {record['run_name']}"]
    if status == "FINISHED" and headline in metrics:
        tags = record.get("tags", {})
        flags = ["random-init"] if tags.get("feclip.random_init") == "true" else []
        flags += ["NOT DEPLOYABLE"] if tags.get("deployable") == "false" else []
        parts.append(f"{headline} {metrics[headline]:.4f}" + (f" ({', '.join(flags)})" if flags else ""))
    elif status != "FINISHED":
        reason = record.get("reason") or ""
        parts.append(f"{status}" + (f": {one_line(reason, 100)}" if reason else ""))
    parts.append(progress.duration(seconds))
    folder = Path(record["job_folder"])
    with contextlib.suppress(ValueError):
        folder = folder.relative_to(root or Path.cwd())
    parts.append(str(folder))
    return "  ".join(parts)


def launch_dir() -> Path:
    """Where the command was typed (Hydra's runtime.cwd, whatever `hydra.job.chdir`), else the working
    directory."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.cwd) if HydraConfig.initialized() else Path.cwd()


def upload_folder(tracker: tracking.Tracker, folder: Path) -> None:
    """The job folder's files as the run's artifacts, each once: without the earlier attempts archived there
    and the files logged as images (run.json `images`)."""
    images = read_json(folder / RUN_FILE).get("images", []) if (folder / RUN_FILE).exists() else []
    skipped = {path for path in (folder / ATTEMPTS_DIR, *(folder / p for p in images)) if path.exists()}
    _upload(tracker, folder, None, skipped)


def _upload(tracker: tracking.Tracker, directory: Path, artifact_path: str | None, skipped: set) -> None:
    """`directory` into `artifact_path` in one call, or entry by entry around the `skipped` paths in it."""
    if not any(path.is_relative_to(directory) for path in skipped):
        tracker.log_artifacts(directory, artifact_path)
        return
    for entry in sorted(directory.iterdir()):
        inner = entry.name if artifact_path is None else f"{artifact_path}/{entry.name}"
        if entry in skipped:
            continue
        if entry.is_dir():
            _upload(tracker, entry, inner, skipped)
        else:
            tracker.log_artifact(entry, artifact_path)


def tracked_job(
    cfg: DictConfig, output_dir: Path, job: tracking.JobInfo, body: Body, *, key_metrics: tuple[str, ...] = ()
) -> dict[str, float]:
    """Run `body(cfg, output_dir, record) -> metrics` inside one MLflow run, files first (`JobRecord`).

    Nothing the job computed is lost to tracking: a lost store only stops the mirroring (the closing line
    prints the sync command); an error or a signal after evaluation still leaves metrics.json and
    scores.csv in the folder and, where the store works, in the run."""
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    if cfg.tracking.enabled:
        tracking.check_tracking_uri(uri)
    output_dir.mkdir(parents=True, exist_ok=True)
    previous = archive_attempt(output_dir)  # a rerun in a used job folder starts clean
    if previous:
        why = f"{previous['status']}: {previous['reason']}" if previous.get("reason") else previous["status"]
        note(f"{output_dir} held an earlier attempt ({why}); moved it to {previous['archive']}")
    write_text(output_dir / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    computed = job_identity(cfg)
    tags = job_tags(cfg, job, computed)
    identity = {
        **process_identity(),
        "job_id": uuid.uuid4().hex,
        "job_folder": str(output_dir),
        "run_name": job.run_name,
        "experiment": cfg.tracking.experiment,
        "tracking_uri": uri,
        "tracked": cfg.tracking.enabled,
        "overrides": list(job.overrides),
        "parent_run_id": job.parent_run_id,
        "sweep_dir": job.sweep_dir,
    }
    same = fold(job, output_dir, tags["feclip.config_hash"])
    if same is not None:
        why = (
            f"{tags['method']} does not read {' '.join(same['axes'])}" if same["axes"] else "the same config"
        )
        reason = f"same as job {same['job']} ({same['run_name']}): {why}"
        update_run(output_dir, **identity, tags=tags, status="SKIPPED", reason=reason, folded_into=same)
        line = f"feclip: folded job {output_dir.name} ({job.run_name}), not run: {reason}"
        progress.job_done("SKIPPED", line)
        return folded_metrics(Path(same["job_folder"]))
    if cfg.tracking.enabled and cfg.tracking.skip_finished:
        done = finished_run(cfg, uri, tags["feclip.config_hash"])
        if done is not None:
            update_run(
                output_dir, **identity, tags=tags, status="SKIPPED", reason=f"run {done.info.run_id} finished"
            )
            skipped = f"run {done.info.run_id} with the same config has finished"
            if job.sweep_dir is None:
                print(f"feclip: skipped {job.run_name}: {skipped}")
            else:
                progress.job_done(
                    "SKIPPED", f"{progress.MARKS['SKIPPED']} {job.run_name}  skipped: {skipped}"
                )
            return dict(done.data.metrics)
    params = job_params(cfg, job_reads(cfg), computed)
    update_run(
        output_dir,
        **identity,
        tags={**tags, "feclip.job_id": identity["job_id"]},
        params=params,
        status="RUNNING",
        started=time.time(),
    )
    tracker = tracking.Tracker(
        uri,
        cfg.tracking.experiment,
        job.run_name,
        {**tags, "feclip.job_id": identity["job_id"]},
        parent_run_id=job.parent_run_id,
        enabled=cfg.tracking.enabled,
        budget_s=cfg.tracking.budget_s,
        timeout_s=cfg.tracking.timeout_s,
        system_metrics_s=cfg.tracking.system_metrics_s,
    )
    error, metrics, record = None, {}, None
    try:
        with (
            signals_as_exceptions(),
            progress.lines_above_bars(),
            metric_warnings() as notes,
            job_label(job.run_name),
            tracker,
        ):
            update_run(output_dir, run_id=tracker.run_id)
            if previous and previous.get("run_id"):
                tracker.end_stale_run(previous["run_id"], previous["status"], previous.get("reason") or "")
            tracker.log_params(params)
            flag = tags["feclip.random_init"] == "true"
            label = variant_label(tags["method"], job.variant)
            title = " · ".join([tags["domain"], label, *(["random-init"] if flag else [])])
            record = JobRecord(output_dir, tracker, random_init=flag, notes=notes, title=title)
            try:
                metrics = body(cfg, output_dir, record)
                record.log_metrics(metrics)
            finally:
                upload_folder(tracker, output_dir)
    except BaseException as caught:
        error = caught
        raise
    finally:
        ended = update_run(
            output_dir,
            status=end_status(error),
            reason=None if error is None else failure_reason(error),
            synced=cfg.tracking.enabled and tracker.lost is None,
            lost=tracker.lost,
            ended=time.time(),
        )
        shown = metrics or (record.metrics if record else {})
        if job.sweep_dir is None:
            print(
                closing_block(ended, shown, key_metrics=key_metrics, tracker=tracker, cache=cache_line(cfg))
            )
        else:  # one line per job; the sweep's closing lines say where the runs and the UI are
            headline = key_metrics[0] if key_metrics else None
            progress.job_done(
                ended["status"], closing_line(ended, shown, headline=headline, root=launch_dir())
            )
        if tracker.lost:
            print(
                f"feclip: tracking was lost ({tracker.lost}); every result is in {output_dir}; log it with: "
                f"python -m feclip.tracking sync {output_dir} --uri {uri}",
                file=sys.stderr,
            )
    return metrics
