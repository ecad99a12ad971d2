"""MLflow tracking for feclip: one Hydra job = one MLflow run, one parent run per multirun.

- `resolve_tracking_uri` / `check_tracking_uri`: which store, and a fast one-line `TrackingError` when it is
  unusable (closed http port, refused scheme, unwritable sqlite path) before any work starts.
- `Tracker`: context manager around one run (params flattened from the config, metrics, artifacts); a failing
  body ends the run FAILED with `failure_reason`; `enabled=False` makes every method a no-op.
  Non-finite metric values are not logged (MLflow charts and sorting break on NaN); their names are listed in
  the run tag `feclip.nonfinite_metrics`, so "not computed" stays distinguishable from "never logged".
- `MlflowSweepCallback` (Hydra `hydra.callbacks`): creates the parent run of a multirun and writes its id to
  `<sweep dir>/mlflow_parent.json`; jobs, in any process or on any node, find it with
  `parent_run_id_for_sweep`. No job relies on in-process state.
- `run_name_from_overrides` / `JobInfo`: run name, variant and parent of the current Hydra job.

Only `MlflowClient` is used (never the fluent `mlflow.start_run` stack), so a parent run and a child run can
be open in the same process (Hydra's basic launcher).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import json
import math
import os
import re
import sqlite3
import sys
import time
import traceback
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from feclip.errors import FeclipError

ENV_URI = "MLFLOW_TRACKING_URI"
PARENT_FILE = "mlflow_parent.json"
TRUNCATION_MARKER = "...[truncated]"
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_LENGTH = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
CHECK_TIMEOUT_S = 5
UNCHECKED_SCHEMES = ("postgresql", "mysql", "mssql", "databricks")
PARENT_TAG = "mlflow.parentRunId"
NONFINITE_TAG = "feclip.nonfinite_metrics"
# Overrides that do not define a variant: where the job runs and where it is tracked.
NAME_IGNORED_KEYS = ("tracking", "device", "precision", "cache_dir", "hydra", "experiment", "mode")
NAME_MAX_LENGTH = 80
SCALAR_PATTERN = r"[-+]?(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|true|false|null"


class TrackingError(FeclipError):
    """The tracking store or a tracking call is unusable; the message names the URI/file and the fix."""


# ----------------------------------------------------------------------------------------------- URIs


def _default_base_dir() -> Path:
    """The launch directory: Hydra's `runtime.cwd` in a Hydra job (whatever `hydra.job.chdir`), else cwd."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.cwd)
    return Path.cwd()


def resolve_tracking_uri(uri: str | None, base_dir: str | Path | None = None) -> str:
    """The tracking URI to use: `MLFLOW_TRACKING_URI` env, else `uri`, else `sqlite:///<base_dir>/mlflow.db`.

    A relative sqlite path is made absolute against `base_dir` (default: the launch directory), so a job
    whose cwd Hydra changed still writes to the same database.
    """
    chosen = (os.environ.get(ENV_URI) or uri or "sqlite:///mlflow.db").strip()
    base = Path(base_dir) if base_dir is not None else _default_base_dir()
    path = sqlite_path(chosen)
    if path is None or path in ("", ":memory:") or Path(path).expanduser().is_absolute():
        return chosen
    query = chosen.partition("?")[1:]
    return f"sqlite:///{(base / path).resolve()}{''.join(query)}"


def sqlite_path(uri: str) -> str | None:
    """The file path of a `sqlite:///path` URI ('' for `sqlite://`), None for other schemes."""
    if not uri.startswith("sqlite:"):
        return None
    return uri.removeprefix("sqlite:").removeprefix("///").removeprefix("//").split("?", 1)[0]


def check_tracking_uri(uri: str, timeout_s: int = CHECK_TIMEOUT_S) -> None:
    """Raise a one-line `TrackingError` (within about `timeout_s`) when `uri` cannot be used for tracking."""
    scheme = urlsplit(uri).scheme
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("http", "https"):
        _check_server(uri, timeout_s)
    elif scheme in ("", "file"):
        raise TrackingError(
            f"tracking URI {uri!r} is a file store, which mlflow 3 refuses; "
            "use sqlite:///mlflow.db or http://host:port (tracking.uri or MLFLOW_TRACKING_URI)"
        )
    elif scheme not in UNCHECKED_SCHEMES:
        raise TrackingError(
            f"tracking URI {uri!r} has unsupported scheme {scheme!r}; expected sqlite:///path, "
            f"http(s)://host:port or {', '.join(UNCHECKED_SCHEMES)}"
        )


def _check_sqlite(uri: str) -> None:
    path = sqlite_path(uri)
    if path in ("", ":memory:"):
        raise TrackingError(f"tracking URI {uri!r} is an in-memory database; use sqlite:///<file>.db")
    file = Path(path).expanduser()
    if file.exists():
        if not (file.is_file() and os.access(file, os.R_OK | os.W_OK) and os.access(file.parent, os.W_OK)):
            raise TrackingError(
                f"tracking database {file} (from {uri!r}) is not a readable and writable file"
            )
        try:
            with contextlib.closing(sqlite3.connect(f"file:{file}?mode=ro", uri=True)) as db:
                db.execute("select count(*) from sqlite_master")
        except sqlite3.DatabaseError as error:
            raise TrackingError(
                f"tracking database {file} (from {uri!r}) is not a sqlite database: {error}"
            ) from None
        return
    existing = next(p for p in file.parents if p.exists())  # mlflow creates the missing folders
    if not (existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)):
        raise TrackingError(
            f"tracking database {file} (from {uri!r}) cannot be created: {existing} is not a writable "
            "folder; point tracking.uri or MLFLOW_TRACKING_URI to a writable path"
        )


@contextlib.contextmanager
def _fast_http(timeout_s: int) -> Iterator[None]:
    """MLflow REST calls without the retry loop (default: 7 retries with backoff: minutes), time-bounded.
    Sets process environment variables for the duration: not for concurrent use from threads."""
    settings = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {key: os.environ.get(key) for key in settings}
    os.environ.update(settings)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _check_server(uri: str, timeout_s: int) -> None:
    from mlflow import MlflowClient

    try:
        with _fast_http(timeout_s):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # any failure means the same thing here
        raise TrackingError(
            f"tracking server {uri} is not usable ({_http_reason(error)}); start it "
            f"(mlflow server --host HOST --port PORT --backend-store-uri sqlite:///mlflow.db) or set "
            f"tracking.uri / {ENV_URI} to a reachable server or sqlite:///mlflow.db"
        ) from None


def _http_reason(error: Exception) -> str:
    """Root cause of a failed REST call (`[Errno 111] Connection refused`), else the message, shortened."""
    cause = re.search(
        r"\[Errno -?\d+\][^'\")]*|Read timed out|timed out|HTTP status \d+|status_code=\d+", str(error)
    )
    return cause.group(0).strip() if cause else _one_line(error, 200)


def _one_line(error: BaseException | str, limit: int) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------- params, keys


def flatten_config(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> {dotted key: leaf}; list items get their index (`a.b.0`); empty ones stay."""
    flat: dict[str, Any] = {}
    items = cfg.items() if isinstance(cfg, Mapping) else enumerate(cfg)
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, (Mapping, list, tuple)) and len(value) > 0:
            flat.update(flatten_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_key(key: str) -> str:
    """MLflow keys allow letters, digits and `_ - . space : /`; anything else becomes `_`."""
    return re.sub(r"[^\w\-. :/]", "_", str(key))


def _truncate(value: Any, limit: int) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ------------------------------------------------------------------------------------------- Tracker


def client_for(uri: str):
    """An `MlflowClient` bound to `uri` (no global tracking state)."""
    from mlflow import MlflowClient

    return MlflowClient(uri)


def experiment_id(client, name: str, create: bool = True) -> str | None:
    """Id of the active experiment `name`; created when missing (`create`), safe against parallel creators."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None and create:
        try:
            return client.create_experiment(name)
        except Exception as error:  # usually: another job created it in between
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise TrackingError(
                    f"cannot create MLflow experiment {name!r}: {_one_line(error, 200)}"
                ) from None
    if experiment is None:
        return None
    if experiment.lifecycle_stage != "active":
        raise TrackingError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted; restore it "
            f"(mlflow experiments restore --experiment-id {experiment.experiment_id}) or choose another "
            "tracking.experiment"
        )
    return experiment.experiment_id


class Tracker:
    """One MLflow run for one job: `with Tracker(...) as tracker:`; disabled -> every method is a no-op.

    On an exception inside the `with`, the run ends FAILED (KILLED for KeyboardInterrupt) with the tag
    `failure_reason` and the artifact `traceback.txt`, and the exception propagates.
    """

    def __init__(
        self,
        uri: str,
        experiment: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
        enabled: bool = True,
    ):
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.parent_run_id, self.enabled = parent_run_id, enabled
        self._client = None
        self._run_id: str | None = None
        self._nonfinite: set[str] = set()

    @property
    def run_id(self) -> str | None:
        """The MLflow run id while/after the run is open; None when disabled."""
        return self._run_id

    def __enter__(self) -> Tracker:
        if not self.enabled:
            return self
        from mlflow.tracking.context.registry import resolve_tags

        self._client = client_for(self.uri)
        exp_id = experiment_id(self._client, self.experiment)
        tags = resolve_tags({**self._parent_tags(exp_id), **self.tags})
        run = self._client.create_run(exp_id, run_name=self.run_name, tags=tags)
        self._run_id = run.info.run_id
        return self

    def _parent_tags(self, exp_id: str) -> dict[str, str]:
        """`mlflow.parentRunId` (+ the parent's `sweep_id`) when the parent exists in this experiment."""
        if not self.parent_run_id:
            return {}
        try:
            parent = self._client.get_run(self.parent_run_id)
        except Exception as error:  # a missing parent must not stop the job
            warnings.warn(
                f"parent run {self.parent_run_id} not found at {self.uri}: {_one_line(error, 120)}",
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
        if self._run_id is None:
            return False
        if exc is None:
            self._client.set_terminated(self._run_id, "FINISHED")
            return False
        try:
            self._client.set_tag(
                self._run_id, "failure_reason", _truncate(f"{exc_type.__name__}: {exc}", MAX_TAG_LENGTH)
            )
            self._client.log_text(self._run_id, "".join(traceback.format_exception(exc)), "traceback.txt")
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
            self._client.set_terminated(self._run_id, status)
        except Exception as error:  # never hide the job's own exception
            warnings.warn(f"could not mark run {self._run_id} failed: {_one_line(error, 200)}", stacklevel=2)
        return False

    def _open(self) -> bool:
        if not self.enabled:
            return False
        if self._run_id is None:
            raise TrackingError("Tracker methods need an open run: use `with Tracker(...) as tracker:`")
        return True

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log `params` (nested dicts/lists flattened to dotted keys; values over 6000 chars truncated with
        `...[truncated]`) in batches."""
        if not self._open():
            return
        from mlflow.entities import Param

        entries = [
            Param(_param_key(k), _truncate(v, MAX_PARAM_LENGTH)) for k, v in flatten_config(params).items()
        ]
        for batch in _batches(entries, PARAMS_PER_BATCH):
            self._client.log_batch(self._run_id, params=batch)

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
                entries.append(Metric(_param_key(key), number, now, step or 0))
            else:
                skipped.add(_param_key(key))
        for batch in _batches(entries, METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=batch)
        if skipped - self._nonfinite:
            self._nonfinite |= skipped
            self._client.set_tag(
                self._run_id, NONFINITE_TAG, _truncate(",".join(sorted(self._nonfinite)), MAX_TAG_LENGTH)
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self._open():
            return
        from mlflow.entities import RunTag

        entries = [RunTag(str(k), _truncate(v, MAX_TAG_LENGTH)) for k, v in tags.items()]
        for batch in _batches(entries, PARAMS_PER_BATCH):
            self._client.log_batch(self._run_id, tags=batch)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload every file under `local_dir` (keeping the tree) into the run's artifacts."""
        if self._open():
            self._client.log_artifacts(self._run_id, str(local_dir), artifact_path)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._open():
            self._client.log_artifact(self._run_id, str(path), artifact_path)


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


# ------------------------------------------------------------------------------------ Hydra multirun


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
            "sweep_overrides": _truncate(" ".join(map(str, overrides)), MAX_TAG_LENGTH),
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
        print(f"feclip: could not end the sweep's parent run: {_one_line(error, 200)}", file=sys.stderr)


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


# ------------------------------------------------------------------------------------------ job info


def _override_part(override: str) -> tuple[str, str] | None:
    """('key', 'name part') of one Hydra override, or None when it does not define the variant."""
    key, _, value = override.lstrip("+").partition("=")
    if key.startswith("~"):
        return key[1:], f"no-{key[1:].rsplit('.', 1)[-1]}"
    if key.split(".")[0].split("/")[0] in NAME_IGNORED_KEYS:
        return None
    value = value.strip("'\"").rstrip("/").rsplit("/", 1)[-1] or value
    leaf = key.rsplit(".", 1)[-1]
    scalar = "." in key or re.fullmatch(SCALAR_PATTERN, value, flags=re.IGNORECASE) is not None
    return key, f"{leaf}={value}" if scalar else value


def _name(parts: list[str]) -> str:
    name = "-".join(parts) or "default"
    if len(name) <= NAME_MAX_LENGTH:
        return name
    return f"{name[: NAME_MAX_LENGTH - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


def _ordered_parts(overrides: list[str], keep_domain_seed: bool) -> list[str]:
    parts = dict(p for p in map(_override_part, overrides) if p is not None)
    domain, seed = parts.pop("domain", None), parts.pop("seed", None)
    middle = [parts[key] for key in sorted(parts)]
    return [
        *([domain] if domain and keep_domain_seed else []),
        *middle,
        *([seed] if seed and keep_domain_seed else []),
    ]


def run_name_from_overrides(overrides: list[str]) -> str:
    """Short stable run name: domain first, other overrides sorted by key, seed last; group overrides give
    their option (`freq=dct` -> `dct`), value overrides `leaf=value` (`model.lam=0.5` -> `lam=0.5`).
    Overrides of where/how a job is tracked or run (tracking, device, hydra, ...) are left out.
    ["domain=C", "freq=dct", "gating=none"] -> "C-dct-none"; [] -> "default"."""
    return _name(_ordered_parts(list(overrides), keep_domain_seed=True))


def variant_from_overrides(overrides: list[str]) -> str:
    """The run name without domain and seed: what a report row groups over seeds and domains."""
    return _name(_ordered_parts(list(overrides), keep_domain_seed=False))


@dataclass(frozen=True)
class JobInfo:
    """Identity of one Hydra job for tracking: run name, variant, group choices and the sweep's parent run."""

    run_name: str
    variant: str
    choices: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None

    @classmethod
    def from_hydra(cls, hydra_cfg: DictConfig | None = None) -> JobInfo:
        """From the `hydra` node (default: `HydraConfig.get()`); the domain choice names the run even when it
        was not overridden; the parent run is looked up only in multirun mode."""
        from hydra.core.hydra_config import HydraConfig

        hc = hydra_cfg if hydra_cfg is not None else HydraConfig.get()
        overrides = [str(o) for o in hc.overrides.task]
        choices = {str(k): str(v) for k, v in hc.runtime.choices.items()}
        if "domain" in choices and not any(o.lstrip("+").startswith("domain=") for o in overrides):
            overrides.insert(0, f"domain={choices['domain']}")
        parent = None
        if str(hc.mode).endswith("MULTIRUN"):
            sweep_dir = Path(str(hc.sweep.dir))
            parent = parent_run_id_for_sweep(
                sweep_dir if sweep_dir.is_absolute() else Path(hc.runtime.cwd) / sweep_dir
            )
        return cls(run_name_from_overrides(overrides), variant_from_overrides(overrides), choices, parent)
