"""The study of a search on disk: `<search.dir>/study.db` (Optuna's RDB storage on SQLite: every trial is
written in a transaction when it is asked and when it is told, so a killed sweep leaves whole records) and
the lock that keeps one sweep per study. The same command resumes it: trials told COMPLETE or FAIL stay,
trials left RUNNING by a dead sweep run again under their own numbers."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from feclip.search.space import SearchError
from feclip.tracking.local import process_alive, process_identity, read_json, write_json

STUDY_FILE = "study.db"
LOCK_FILE = "search.lock"
DONE = (TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)

optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def storage_url(folder: Path) -> str:
    return f"sqlite:///{Path(folder) / STUDY_FILE}"


def _storage(folder: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(storage_url(folder))


def _existing(folder: Path, name: str) -> bool:
    if not (Path(folder) / STUDY_FILE).exists():
        return False
    return name in optuna.study.get_all_study_names(_storage(folder))


def _check_identity(study: optuna.Study, folder: Path, found: dict) -> None:
    """A study is resumed only by the command that started it (bar budget, sampler and stage)."""
    stored = study.user_attrs.get("identity") or {}
    if stored == found:
        return
    differing = next((key for key in found if stored.get(key) != found.get(key)), "identity")
    raise SearchError(
        f"{Path(folder) / STUDY_FILE} holds the study {study.study_name!r} of another search ({differing}: "
        f"{stored.get(differing)!r} there, {found.get(differing)!r} now); expected its command, or a new "
        "search.name or search.dir"
    )


def open_study(folder: Path, name: str, identity: dict, *, directions: list[str]) -> optuna.Study:
    """The study `name` in `<folder>/study.db`: created with `identity`, or loaded when that matches."""
    if _existing(folder, name):
        study = optuna.load_study(study_name=name, storage=_storage(folder))
        _check_identity(study, folder, identity)
        return study
    study = optuna.create_study(study_name=name, storage=_storage(folder), directions=directions)
    study.set_user_attr("identity", identity)
    return study


def load_study(folder: Path, name: str, identity: dict) -> optuna.Study:
    """The existing study (the confirm stage); a `SearchError` when there is none or it is another's."""
    if not _existing(folder, name):
        raise SearchError(
            f"search.stage=confirm: no study {name!r} in {Path(folder) / STUDY_FILE}; expected the search's "
            "trials first (the same command with search.stage=trials)"
        )
    study = optuna.load_study(study_name=name, storage=_storage(folder))
    _check_identity(study, folder, identity)
    return study


def check_free(folder: Path, name: str, identity: dict) -> None:
    """The study `name` can be started or resumed here: no running sweep holds it, and an existing study
    is this search's."""
    path = Path(folder) / LOCK_FILE
    record = read_json(path) if path.exists() else {}
    if process_alive(record):
        raise SearchError(
            f"{folder} is used by a running search (pid {record['pid']} on {record['host']}); expected "
            "one sweep per search.dir: wait for it to end, or another search.name"
        )
    if _existing(folder, name):
        _check_identity(optuna.load_study(study_name=name, storage=_storage(folder)), folder, identity)


@contextlib.contextmanager
def search_lock(folder: Path, name: str, identity: dict) -> Iterator[None]:
    """One sweep per study at a time: `<folder>/search.lock` names the sweep's process; a lock left by a dead
    process is taken over."""
    path = Path(folder) / LOCK_FILE
    check_free(folder, name, identity)
    write_json(path, {**process_identity(), "status": "RUNNING", "started": time.time()})
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def n_done(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=DONE))


def stale_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Trials left RUNNING by a sweep that ended without telling them (a signal, a dead process)."""
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto front (several), [] before a trial completed."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return []
    return [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)


def pick(study: optuna.Study) -> FrozenTrial:
    """The trial the confirm stage runs: the best, or on a Pareto front the one whose values have the best
    mean (every objective shares `search.direction`)."""
    front = best_trials(study)
    if not front:
        raise SearchError(
            f"study {study.study_name!r} has no complete trial; expected a search with a finished trial "
            "before search.stage=confirm"
        )
    means = [float(np.mean(t.values)) for t in front]
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    return front[int(np.argmax(means) if maximize else np.argmin(means))]
