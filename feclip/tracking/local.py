"""The job folder is the source of truth; MLflow mirrors it.

A job writes, as soon as each exists: `config.yaml` (the resolved config), `run.json` (identity and status:
job id, run name, experiment, tags, overrides, parent, the run id once created, status RUNNING -> FINISHED |
FAILED | KILLED | SKIPPED with the reason, whether tracking kept up), `history.csv` (per-epoch losses: step,
name, value, appended every epoch), `metrics.json` (right after evaluation), its figures, scores and
checkpoint. `python -m feclip.tracking sync` logs such a folder into a store afterwards (`sync.py`).
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
SWEEP_FILE = "sweep.json"


def write_json(path: Path, content: Any) -> None:
    """Atomic: a reader never sees half a file (a kill before the rename leaves the old one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(content, indent=2, allow_nan=False))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def update_run(folder: Path, **fields: Any) -> dict:
    """Merge `fields` into the folder's run.json (created when missing); returns the new record."""
    path = Path(folder) / RUN_FILE
    record = {**(read_json(path) if path.exists() else {}), **fields, "updated": time.time()}
    write_json(path, record)
    return record


def append_history(folder: Path, step: int, values: dict[str, float]) -> None:
    """One row per value of one epoch (step), flushed at once."""
    path = Path(folder) / HISTORY_FILE
    new = not path.exists()
    with path.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["step", "name", "value"])
        writer.writerows([step, name, repr(float(value))] for name, value in values.items())
        handle.flush()
        os.fsync(handle.fileno())


def read_history(folder: Path) -> list[tuple[int, str, float]]:
    """(step, name, value) rows of history.csv ([] without one)."""
    path = Path(folder) / HISTORY_FILE
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [(int(r["step"]), r["name"], float(r["value"])) for r in csv.DictReader(handle)]


def job_folders(sweep_dir: Path) -> list[Path]:
    """The job folders of a sweep (those with a run.json), in job order."""
    folders = [p.parent for p in Path(sweep_dir).glob(f"*/{RUN_FILE}")]
    return sorted(
        folders, key=lambda p: (not p.name.isdigit(), int(p.name) if p.name.isdigit() else 0, p.name)
    )
