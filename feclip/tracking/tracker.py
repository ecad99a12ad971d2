"""One MLflow run for one job (`Tracker`): params flattened from the config, metrics, artifacts; a failing
body ends the run FAILED with `failure_reason`; `enabled=False` makes every method a no-op. Non-finite metric
values are not logged (MLflow charts and sorting break on NaN); their names are listed in the run tag
`feclip.nonfinite_metrics`, so "not computed" stays distinguishable from "never logged".

Only `MlflowClient` is used (never the fluent `mlflow.start_run` stack), so a parent run and a child run can
be open in the same process (Hydra's basic launcher).

An experiment feclip logs to carries its UI settings (`ui_tags`): the saved runs view `study_view` that
`uris.run_url` opens, so MLflow's UI shows the study (runs by variant, its metrics as columns and charts)."""

from __future__ import annotations

import json
import logging
import math
import re
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from feclip.tracking.uris import (
    STUDY_VIEW,
    StoreError,
    TrackingError,
    bounded_call,
    http_reason,
    one_line,
    sqlite_path,
)

TRUNCATION_MARKER = "...[truncated]"
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_LENGTH = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
PARENT_TAG = "mlflow.parentRunId"
NONFINITE_TAG = "feclip.nonfinite_metrics"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # the MLflow 3 UI's workflow view of an experiment
ML_EXPERIMENT_KIND = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."  # MLflow 3.18: a saved runs view is an experiment tag
UI_TAG = "feclip.ui"  # the version of the UI settings below an experiment carries (set on first use)
UI_VERSION = "1"
VIEW_TAGS = ("domain", "method", "variant", "seed")  # run tags shown as columns
VIEW_METRICS = ("auroc", "auroc_cold", "auroc_cross", "acc_fa1", "acc_fa1_cold", "dev/auroc")
VIEW_GROUPS = ("variant", "method")  # a variant name is unique within its method only; variant first: the
# group's name ("variant: fft, method: feclip") is cut to the Run Name column's width


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> {dotted key: leaf}; a list is one value, written as Hydra reads it back (`[7,9,11]`);
    empty dicts stay."""
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and len(value) > 0:
            flat.update(flatten_config(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            flat[name] = list_value(value)
        else:
            flat[name] = value
    return flat


def list_value(values: list | tuple) -> str:
    """`[7,9,11]`, `[a,b]`, `[[1,3],[3,1]]`: one param value a Hydra override accepts as typed."""
    return "[" + ",".join(list_value(v) if isinstance(v, (list, tuple)) else str(v) for v in values) + "]"


def param_key(key: str) -> str:
    """MLflow keys allow letters, digits and `_ - . space : /`; anything else becomes `_`."""
    return re.sub(r"[^\w\-. :/]", "_", str(key))


def truncate(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------------------- Tracker


def client_for(uri: str):
    """An `MlflowClient` bound to `uri` (no global tracking state)."""
    from mlflow import MlflowClient

    return MlflowClient(uri)


def folder_name(name: str) -> str:
    """`name` (from the config) as one folder name that stays inside its parent: every character but
    letters, digits, `_ - .` and space becomes `_` (`/` and `\\` included, so `../x` and `/abs` cannot lead
    out), and a name of dots only (`.`, `..`) becomes underscores."""
    safe = re.sub(r"[^\w\-. ]", "_", str(name))
    return safe if safe.strip(".") else "_" * max(1, len(safe))


def artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment keeps its artifacts: `mlartifacts/<name as one folder name>` beside a sqlite
    store (never the job's working directory, which `hydra.job.chdir=true` makes the job folder); the
    server's choice for other stores."""
    path = sqlite_path(uri)
    if not path:
        return None
    return (Path(path).expanduser().resolve().parent / "mlartifacts" / folder_name(name)).as_uri()


def study_view() -> str:
    """The saved runs view `STUDY_VIEW` as MLflow 3.18's UI stores one (experiment tag
    `mlflow.sharedViewState.<key>`: a JSON envelope whose `state` is the JSON of the runs page's search and
    table settings; `uris.run_url` opens it). Runs grouped by variant and method (a group row holds the
    variant's mean over its runs; the sweep parents sit in "Additional runs"), sorted by name, the run tags
    `VIEW_TAGS` and metrics `VIEW_METRICS` as columns; the chart view opens on one bar chart per metric with
    one bar per job (variant x domain x seed), every run shown, MLflow's other chart sections collapsed."""
    columns = [f"tags.`{tag}`" for tag in VIEW_TAGS] + [f"metrics.`{metric}`" for metric in VIEW_METRICS]
    charts = [
        {
            "uuid": f"feclip-chart-{i}",
            "type": "BAR",
            "metricKey": metric,
            "displayName": metric,
            "metricSectionId": "feclip-study",
            "runsCountToCompare": 1000,
            "deleted": False,
            "isGenerated": False,
        }
        for i, metric in enumerate(VIEW_METRICS)
    ]
    collapsed = ("Model metrics", "System metrics", "dev")  # MLflow's sections of every other metric
    sections = [{"uuid": "feclip-study", "name": "Study", "display": True, "isReordered": True}] + [
        {"uuid": f"feclip-section-{i}", "name": name, "display": False, "isReordered": False}
        for i, name in enumerate(collapsed)
    ]
    state = {
        "searchFilter": "",
        "orderByKey": "tags.`mlflow.runName`",
        "orderByAsc": True,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "selectedColumns": columns,
        "columnOrder": columns,  # tags first: MLflow puts metrics before tags
        "columnWidths": {column: 90 for column in columns[: len(VIEW_TAGS)]},
        "groupBy": {
            "aggregateFunction": "average",
            "groupByKeys": [{"mode": "tag", "groupByData": tag} for tag in VIEW_GROUPS],
        },
        "runsHiddenMode": "SHOW_ALL",
        "useGroupedValuesInCharts": False,
        "compareRunCharts": charts,
        "compareRunSections": [{**section, "deleted": False} for section in sections],
        "isAccordionReordered": True,
    }
    now = int(time.time() * 1000)
    envelope = {"name": "feclip study", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    return json.dumps(envelope)


def ui_tags() -> dict[str, str]:
    """The experiment tags that make MLflow's UI open an experiment on its study (`study_view`)."""
    return {
        EXPERIMENT_KIND_TAG: ML_EXPERIMENT_KIND,
        VIEW_TAG_PREFIX + STUDY_VIEW: study_view(),
        UI_TAG: UI_VERSION,  # last: a setup cut short is redone at the next use
    }


def set_up_ui(client, experiment) -> None:
    """Give an existing experiment feclip's UI settings (`ui_tags`) unless it has this version of them; a
    view a person saved over `STUDY_VIEW` stays until feclip's settings change. A store that refuses costs
    one warning, never the run."""
    if experiment.tags.get(UI_TAG) == UI_VERSION:
        return
    try:
        for key, value in ui_tags().items():
            client.set_experiment_tag(experiment.experiment_id, key, value)
    except Exception as error:  # a tag of a parallel job in between, a read-only store
        warnings.warn(
            f"MLflow experiment {experiment.name!r}: UI settings not saved ({http_reason(error)})",
            stacklevel=3,
        )


def experiment_id(client, name: str, create: bool = True) -> str | None:
    """Id of the active experiment `name`; created when missing (`create`), safe against parallel creators.
    With `create`, the experiment carries feclip's UI settings (`ui_tags`: the training-runs pages, the study
    view), an existing one from its first use on."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None and create:
        try:
            return client.create_experiment(
                name,
                artifact_location=artifact_location(client.tracking_uri, name),
                tags=ui_tags(),
            )
        except Exception as error:  # usually: another job created it in between
            experiment = client.get_experiment_by_name(name)
            if experiment is None:  # the store refused it (disk full, locked)
                raise StoreError(f"cannot create MLflow experiment {name!r}: {http_reason(error)}") from None
    if experiment is None:
        return None
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another "
            "tracking.experiment"
        )
    if create:
        set_up_ui(client, experiment)
    return experiment.experiment_id


class Tracker:
    """One MLflow run for one job: `with Tracker(...) as tracker:`; disabled -> every method is a no-op.

    On an exception inside the `with`, the run ends FAILED (KILLED for KeyboardInterrupt and SIGTERM) with
    the tag `failure_reason` and the artifact `traceback.txt`, and the exception propagates.

    Tracking never costs a job its results: every call to the store has a short timeout (`timeout_s`, no
    mlflow retry loop) and failed calls are retried with backoff within one budget for the whole run
    (`budget_s`; a call never waits past what is left of it, a locked sqlite store included). Once the
    budget is spent the tracker stops calling the store and `lost` says why; the job goes on (its folder
    holds everything, `python -m feclip.tracking sync` logs it afterwards).
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        enabled: bool = True,
        *,
        budget_s: float = 30.0,
        timeout_s: float = 5.0,
        system_metrics_s: float | None = None,
    ):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.parent_run_id, self.enabled = parent_run_id, enabled
        self.budget_s, self.timeout_s = budget_s, timeout_s
        self.system_metrics_s = system_metrics_s  # sampling interval of MLflow's system metrics; None = off
        self._monitor = None
        self.lost: str | None = None  # why the tracker stopped calling the store (None while it works)
        self._spent = 0.0
        self._client = None
        self._run_id: str | None = None
        self.experiment_id: str | None = None
        self._nonfinite: set[str] = set()

    def _call(self, what: str, fn, *args, **kwargs):
        """fn(*args, **kwargs) against the store, retried within the budget; None once tracking is lost."""
        if self.lost is not None:
            return None
        delay = 0.5
        while True:
            start = time.monotonic()
            try:
                with bounded_call(max(0.1, min(self.timeout_s, self.budget_s - self._spent))):
                    return fn(*args, **kwargs)
            except Exception as error:  # whatever the store raises: the job must go on
                if isinstance(error, TrackingError) and not isinstance(error, StoreError):
                    raise  # a usage error (a non-numeric metric, a deleted experiment)
                self._spent += time.monotonic() - start
                if self._spent + delay > self.budget_s:
                    self.lost = f"{what} failed ({http_reason(error)}) after {self._spent:.0f} s of retries"
                    print(
                        f"feclip: tracking at {self.uri} stopped: {self.lost}; the job goes on",
                        file=sys.stderr,
                    )
                    return None
                time.sleep(delay)
                self._spent += delay
                delay = min(2 * delay, 8.0)

    @property
    def run_id(self) -> str | None:
        """The MLflow run id while/after the run is open; None when disabled."""
        return self._run_id

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        from mlflow.tracking.context.registry import resolve_tags

        self._client = client_for(self.uri)
        exp_id = self._call("creating the experiment", experiment_id, self._client, self.experiment)
        if exp_id is None:
            return self
        self.experiment_id = exp_id
        parent = self._call("reading the parent run", self._parent_tags, exp_id) or {}
        tags = resolve_tags({**parent, **self.tags})
        run = self._call(
            "creating the run", self._client.create_run, exp_id, run_name=self.run_name, tags=tags
        )
        self._run_id = None if run is None else run.info.run_id
        if self._run_id and self.system_metrics_s:
            self._start_system_metrics()
        return self

    def _start_system_metrics(self) -> None:
        """CPU, memory, disk, network (and GPU where a monitor exists) as `system/*` metrics."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop lines per job
        self._monitor = SystemMetricsMonitor(
            self._run_id, sampling_interval=self.system_metrics_s, tracking_uri=self.uri
        )
        self._monitor.start()

    def _stop_system_metrics(self) -> None:
        """Stop the sampler within `timeout_s` and flush its samples while the store works. MLflow's
        `finish()` joins the sampler without a time limit (a sampler stuck on a dead store would hold the
        job), so the stop is done here: set its shutdown event, join with a timeout, flush."""
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        monitor._shutdown_event.set()
        thread = monitor._process
        if thread is not None:
            thread.join(timeout=self.timeout_s)
        if self.lost is None and (thread is None or not thread.is_alive()):
            self._call("logging system metrics", monitor.mlflow_logger.flush)

    def _parent_tags(self, exp_id: str) -> dict[str, str]:
        """`mlflow.parentRunId` (+ the parent's `sweep_id`) when the parent exists in this experiment."""
        if not self.parent_run_id:
            return {}
        try:
            parent = self._client.get_run(self.parent_run_id)
        except Exception as error:  # a missing parent must not stop the job
            warnings.warn(
                f"parent run {self.parent_run_id} not found at {self.uri}: {one_line(error, 120)}",
                stacklevel=3,
            )
            return {}
        if parent.info.experiment_id != exp_id:
            warnings.warn(
                f"parent run {self.parent_run_id} is in another experiment; not nesting", stacklevel=3
            )
            return {}
        sweep = {"sweep_id": parent.data.tags["sweep_id"]} if "sweep_id" in parent.data.tags else {}
        return {PARENT_TAG: self.parent_run_id, **sweep}

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._stop_system_metrics()
        if not self._open():
            return False
        if exc is None:
            self._call("ending the run", self._client.set_terminated, self._run_id, "FINISHED")
            return False
        reason = truncate(failure_reason(exc), MAX_TAG_LENGTH)
        self._call("tagging the failure", self._client.set_tag, self._run_id, "failure_reason", reason)
        text = "".join(traceback.format_exception(exc))
        self._call("logging the traceback", self._client.log_text, self._run_id, text, "traceback.txt")
        self._call("ending the run", self._client.set_terminated, self._run_id, end_status(exc))
        return False

    def _open(self) -> bool:
        """Whether calls should go to the store: enabled, the run created, tracking not lost."""
        if self.enabled and self._client is None:
            raise TrackingError("Tracker methods need an open run: use `with Tracker(...) as tracker:`")
        return self.enabled and self._run_id is not None and self.lost is None

    def end_stale_run(self, run_id: str, status: str, reason: str) -> None:
        """End another run of this store that is still RUNNING (an earlier attempt of the same job, whose
        process died) with `status` and the tag `failure_reason`; a run this store lacks is left alone."""
        if self._open():
            self._call("ending a stale run", self._end_if_running, run_id, status, reason)

    def _end_if_running(self, run_id: str, status: str, reason: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            run = self._client.get_run(run_id)
        except MlflowException:  # tracked in another store: `python -m feclip.tracking sync` closes it there
            return
        if run.info.status == "RUNNING":
            self._client.set_tag(run_id, "failure_reason", truncate(reason, MAX_TAG_LENGTH))
            self._client.set_terminated(run_id, status)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log `params` (nested dicts/lists flattened to dotted keys; values over 6000 chars truncated with
        `...[truncated]`) in batches."""
        if not self._open():
            return
        from mlflow.entities import Param

        entries = [
            Param(param_key(k), truncate(v, MAX_PARAM_LENGTH)) for k, v in flatten_config(params).items()
        ]
        for batch in batches(entries, PARAMS_PER_BATCH):
            self._call("logging params", self._client.log_batch, self._run_id, params=batch)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log numeric `metrics` at `step` (default 0). Non-finite values are skipped and named in the tag
        `feclip.nonfinite_metrics`; a non-numeric value is a `TrackingError`."""
        if not self._open():
            return
        from mlflow.entities import Metric

        now, entries, skipped = int(time.time() * 1000), [], set()
        for key, value in metrics.items():
            number = _as_float(key, value)
            if math.isfinite(number):
                entries.append(Metric(param_key(key), number, now, step or 0))
            else:
                skipped.add(param_key(key))
        for batch in batches(entries, METRICS_PER_BATCH):
            self._call("logging metrics", self._client.log_batch, self._run_id, metrics=batch)
        if skipped - self._nonfinite:
            self._nonfinite |= skipped
            value = truncate(",".join(sorted(self._nonfinite)), MAX_TAG_LENGTH)
            self._call("tagging non-finite metrics", self._client.set_tag, self._run_id, NONFINITE_TAG, value)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self._open():
            return
        from mlflow.entities import RunTag

        entries = [RunTag(str(k), truncate(v, MAX_TAG_LENGTH)) for k, v in tags.items()]
        for batch in batches(entries, PARAMS_PER_BATCH):
            self._call("setting tags", self._client.log_batch, self._run_id, tags=batch)

    def log_input(self, name: str, digest: str, source: str, *, context: str, profile: dict) -> None:
        """The dataset a run used (MLflow's Datasets column): `name`, content `digest`, `source` path,
        `context` (train, test) and a small `profile` (counts)."""
        if not self._open():
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        dataset = Dataset(
            name, digest, "local", json.dumps({"uri": str(source)}), profile=json.dumps(profile)
        )
        entry = DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])
        self._call("logging the dataset", self._client.log_inputs, self._run_id, datasets=[entry])

    def log_image(self, path: str | Path, key: str) -> None:
        """A figure as an MLflow image under `key`: shown side by side across runs in the compare view."""
        if not self._open():
            return
        from PIL import Image

        with Image.open(path) as image:
            self._call("logging an image", self._client.log_image, self._run_id, image.copy(), key=key)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload every file under `local_dir` (keeping the tree) into the run's artifacts."""
        if self._open():
            self._call(
                "logging artifacts", self._client.log_artifacts, self._run_id, str(local_dir), artifact_path
            )

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._open():
            self._call(
                "logging an artifact", self._client.log_artifact, self._run_id, str(path), artifact_path
            )


def failure_reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def end_status(error: BaseException | None) -> str:
    """FINISHED, KILLED (Ctrl-C, SIGTERM) or FAILED."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"


def _as_float(key: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TrackingError(f"metric {key!r} has non-numeric value {value!r}; expected a number") from None


def search_all_runs(client, experiment_ids: list[str], filter_string: str = "") -> list:
    """Every active run matching `filter_string` (all result pages)."""
    runs, token = [], None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs
