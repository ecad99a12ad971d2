"""Tracking URIs: which store a job logs to, and a fast one-line `TrackingError` when it is unusable (closed
http port, refused scheme, unwritable sqlite path) before any work starts."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from sqlalchemy import event
from sqlalchemy.engine import Engine

from feclip.errors import FeclipError

ENV_URI = "MLFLOW_TRACKING_URI"
CHECK_TIMEOUT_S = 5
UNCHECKED_SCHEMES = ("postgresql", "mysql", "mssql", "databricks")


class TrackingError(FeclipError):
    """The tracking store or a tracking call is unusable; the message names the URI/file and the fix."""


class StoreError(TrackingError):
    """A store failed a call it should serve (disk full, locked): a tracker retries it within its budget and
    then goes on untracked; a command line prints it in one line."""


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
def fast_http(timeout_s: int) -> Iterator[None]:
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


_BUSY_TIMEOUT_MS: list[int | None] = [None]  # the sqlite busy wait of the store call in progress


@event.listens_for(Engine, "before_cursor_execute", retval=True)
def _cap_busy_timeout(conn, cursor, statement, parameters, context, executemany):
    """MLflow sets `PRAGMA busy_timeout = 20000` on every sqlite session; inside `bounded_call` the wait is
    the call's own timeout instead."""
    if _BUSY_TIMEOUT_MS[0] is not None and statement.lstrip().upper().startswith("PRAGMA BUSY_TIMEOUT"):
        statement = f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS[0]};"
    return statement, parameters


@contextlib.contextmanager
def bounded_call(timeout_s: float) -> Iterator[None]:
    """One call to a store that gives up after about `timeout_s` seconds: http without MLflow's retry loop
    (`fast_http`), a locked sqlite store after `timeout_s` instead of MLflow's 20 s per statement. The
    store's own error logs (a traceback and the SQL per locked call) are muted: the caller reports the
    failure in one line. Process-wide settings: not for concurrent use from threads."""
    store_logger = logging.getLogger("mlflow.store")
    saved = _BUSY_TIMEOUT_MS[0], store_logger.level
    _BUSY_TIMEOUT_MS[0] = max(1, round(1000 * timeout_s))
    store_logger.setLevel(logging.CRITICAL)
    try:
        with fast_http(max(1, round(timeout_s))):
            yield
    finally:
        _BUSY_TIMEOUT_MS[0] = saved[0]
        store_logger.setLevel(saved[1])


def _check_server(uri: str, timeout_s: int) -> None:
    from mlflow import MlflowClient

    try:
        with fast_http(timeout_s):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as error:  # any failure means the same thing here
        raise TrackingError(
            f"tracking server {uri} is not usable ({http_reason(error)}); start it "
            f"(mlflow server --host HOST --port PORT --backend-store-uri sqlite:///mlflow.db) or set "
            f"tracking.uri / {ENV_URI} to a reachable server or sqlite:///mlflow.db"
        ) from None


def http_reason(error: Exception) -> str:
    """Root cause of a failed store call (`[Errno 111] Connection refused`, `(sqlite3.OperationalError)
    database is locked`), else the message, shortened."""
    cause = re.search(
        r"\[Errno -?\d+\][^'\")]*|Read timed out|timed out|HTTP status \d+|status_code=\d+"
        r"|\(sqlite3\.\w+\) [^\[\n]*",
        str(error),
    )
    return cause.group(0).strip() if cause else one_line(error, 200)


def one_line(error: BaseException | str, limit: int) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


UI_PORT = 5000  # where `mlflow ui` serves by default
ENV_UI_URL = "FECLIP_UI_URL"  # the UI's address as the user opens it (a tunnel, a proxy)


def ui_address() -> str:
    """Where the MLflow UI of a sqlite store is opened: `FECLIP_UI_URL`, else the host and port `mlflow ui`
    serves on: its own variables `MLFLOW_HOST` / `MLFLOW_PORT` (a wildcard host is opened as 127.0.0.1),
    else 127.0.0.1:5000."""
    if os.environ.get(ENV_UI_URL):
        return os.environ[ENV_UI_URL].rstrip("/")
    host = os.environ.get("MLFLOW_HOST") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{ui_port()}"


def ui_port() -> int:
    port = os.environ.get("MLFLOW_PORT", "")
    return int(port) if port.isdigit() else UI_PORT


STUDY_VIEW = "feclip-study"  # the saved runs view feclip puts on its experiments (tracker.study_view)
# MLflow 3.18's UI shows an experiment in its GenAI pages unless the address (or the sidebar's "Model
# training" switch, remembered per browser) says otherwise; the experiment's `mlflow.experimentKind` tag is
# not read for that.
ML_WORKFLOW = "workflowType=machine_learning"


def run_url(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """The MLflow UI address of a run, or of its experiment's study view (training runs grouped by variant and
    method, the study's metrics as columns: `STUDY_VIEW`), in the UI's "Model training" pages: the server's
    own address for http(s) stores, `ui_address()` for a sqlite store (see `ui_command`)."""
    base = uri.rstrip("/") if urlsplit(uri).scheme in ("http", "https") else ui_address()
    page = f"{base}/#/experiments/{experiment_id}"
    if run_id:
        return f"{page}/runs/{run_id}?{ML_WORKFLOW}"
    return f"{page}/runs?viewStateShareKey={STUDY_VIEW}&{ML_WORKFLOW}"


def ui_command(uri: str) -> str | None:
    """The command that serves a sqlite store's UI where `run_url` points (None for a server, which already
    has one): `mlflow ui --backend-store-uri <uri> --port <port>`, and how to choose another port."""
    if urlsplit(uri).scheme != "sqlite":
        return None
    if os.environ.get(ENV_UI_URL):
        return f"mlflow ui --backend-store-uri {uri} (opened at {ENV_UI_URL}={ui_address()})"
    return f"mlflow ui --backend-store-uri {uri} --port {ui_port()} (or export MLFLOW_PORT)"
