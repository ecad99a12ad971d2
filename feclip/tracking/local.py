"""The job folder is the source of truth; MLflow mirrors it.

A job writes, as soon as each exists: `config.yaml` (the resolved config), `run.json` (identity and status:
job id, run name, experiment, tags, overrides, parent, the run id once created, status RUNNING -> FINISHED |
FAILED | KILLED | SKIPPED with the reason, whether tracking kept up), `history.csv` (per-epoch losses: step,
name, value, appended every epoch), `metrics.json` (right after evaluation), its figures, scores and
checkpoint. `python -m feclip.tracking sync` logs such a folder into a store afterwards (`sync.py`).

A job run again in a used folder starts clean: `archive_attempt` moves the earlier attempt's files to
`attempts/<n>/` (itself a job folder, which `sync` can log), marks an attempt whose process died FAILED, and
refuses while that process still runs. Records are written atomically (`feclip.files`); an unreadable one is a
one-line `JobFolderError`.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from feclip.errors import FeclipError
from feclip.files import write_text

RUN_FILE = "run.json"
HISTORY_FILE = "history.csv"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "config.yaml"
SWEEP_FILE = "sweep.json"
ATTEMPTS_DIR = "attempts"  # earlier attempts of a job rerun in its folder: attempts/1, attempts/2, ...
KEPT_IN_PLACE = (".hydra", ATTEMPTS_DIR)  # Hydra's record of this attempt; the archive itself
DIED = "the process died (found RUNNING when the job was rerun in its folder)"


class JobFolderError(FeclipError):
    """A job folder's record is unreadable, or the folder is in use by a running job."""


def write_json(path: Path, content: Any) -> None:
    """Atomic: a reader never sees half a file (a kill before the rename leaves the old one)."""
    write_text(path, json.dumps(content, indent=2, allow_nan=False))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise JobFolderError(
            f"{path}: not valid JSON ({error.msg}: line {error.lineno}, column {error.colno}; truncated or "
            "edited?); expected a record written by feclip"
        ) from None


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


def process_identity() -> dict[str, Any]:
    """Who runs a job: `pid` and `host`, recorded in run.json to tell a dead attempt from a running one."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def process_alive(record: dict) -> bool:
    """Whether the process of a RUNNING record still runs (on this host; another host's is assumed dead)."""
    if record.get("status") != "RUNNING" or record.get("host") != socket.gethostname() or "pid" not in record:
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return record["pid"] != os.getpid()


def archive_attempt(folder: Path) -> dict | None:
    """Move an earlier attempt's files (everything but `KEPT_IN_PLACE` and Hydra's *.log) from the job folder
    to `attempts/<n>/`; returns its record (with `archive`: the new path), None when the folder is unused.
    An attempt left RUNNING by a dead process is marked FAILED there; one whose process runs is refused."""
    folder = Path(folder)
    if not (folder / RUN_FILE).exists():
        return None
    record = read_json(folder / RUN_FILE)
    if process_alive(record):
        raise JobFolderError(
            f"{folder} is in use by a running job (pid {record['pid']} on {record['host']}); expected an "
            "unused hydra.run.dir, or wait for that job to end"
        )
    archives = folder / ATTEMPTS_DIR
    number = 1 + max((int(p.name) for p in archives.glob("*") if p.name.isdigit()), default=0)
    target = archives / str(number)
    target.mkdir(parents=True)
    for entry in sorted(folder.iterdir()):
        if entry.name not in KEPT_IN_PLACE and entry.suffix != ".log":
            os.replace(entry, target / entry.name)
    if record.get("status") == "RUNNING":
        record = update_run(target, status="FAILED", reason=DIED, ended=time.time())
    return {**record, "archive": str(target)}
