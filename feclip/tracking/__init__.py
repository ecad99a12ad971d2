"""MLflow tracking for feclip: one Hydra job = one MLflow run, one parent run per multirun.

- `uris`: which store (`resolve_tracking_uri`) and a fast one-line error when it is unusable;
- `tracker`: `Tracker`, one run per job (params, metrics, artifacts, FAILED/KILLED with the reason);
- `sweep`: `MlflowSweepCallback`, the parent run of a multirun and how its jobs find it;
- `names`: run names, variants and `JobInfo`;
- `report`: variant x domain tables of tracked runs with the published anchors beside them.
"""

from feclip.tracking.names import JobInfo, name_parts, run_name, variant
from feclip.tracking.sweep import PARENT_FILE, MlflowSweepCallback, end_sweep, parent_run_id_for_sweep
from feclip.tracking.tracker import (
    NONFINITE_TAG,
    PARENT_TAG,
    Tracker,
    client_for,
    experiment_id,
    flatten_config,
    search_all_runs,
)
from feclip.tracking.uris import (
    ENV_URI,
    TrackingError,
    check_tracking_uri,
    resolve_tracking_uri,
    run_url,
    sqlite_path,
    ui_command,
)

__all__ = [
    "ENV_URI",
    "NONFINITE_TAG",
    "PARENT_FILE",
    "PARENT_TAG",
    "JobInfo",
    "MlflowSweepCallback",
    "Tracker",
    "TrackingError",
    "check_tracking_uri",
    "client_for",
    "end_sweep",
    "experiment_id",
    "flatten_config",
    "parent_run_id_for_sweep",
    "resolve_tracking_uri",
    "run_url",
    "ui_command",
    "name_parts",
    "run_name",
    "search_all_runs",
    "sqlite_path",
    "variant",
]
