"""MLflow tracking for feclip: one Hydra job = one MLflow run, one parent run per multirun.

- `uris`: which store (`resolve_tracking_uri`) and a fast one-line error when it is unusable;
- `tracker`: `Tracker`, one run per job (params, metrics, artifacts, FAILED/KILLED with the reason);
- `sweep`: `MlflowSweepCallback`, the parent run of a multirun and how its jobs find it;
- `names`: run names, variants and `JobInfo`;
- `report`: variant x domain tables of tracked runs with the published anchors beside them.
"""

from importlib import import_module

_HOMES = {  # what `feclip.tracking.<name>` is, imported on first use: `import feclip.tracking.report` (the
    # report command) does not load the sweep callback's Hydra, figures and torch
    "names": ("JobInfo", "name_parts", "run_name", "variant"),
    "sweep": ("PARENT_FILE", "MlflowSweepCallback", "end_sweep", "parent_run_id_for_sweep"),
    "tracker": (
        "NONFINITE_TAG",
        "PARENT_TAG",
        "Tracker",
        "client_for",
        "experiment_id",
        "flatten_config",
        "search_all_runs",
    ),
    "uris": (
        "ENV_URI",
        "TrackingError",
        "check_tracking_uri",
        "resolve_tracking_uri",
        "run_url",
        "sqlite_path",
        "ui_command",
    ),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME_OF:
        raise AttributeError(f"module 'feclip.tracking' has no attribute {name!r}")
    value = getattr(import_module(f"feclip.tracking.{_HOME_OF[name]}"), name)
    globals()[name] = value
    return value


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
