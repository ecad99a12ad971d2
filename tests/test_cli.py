"""The error boundary of every entry point (feclip.cli): one line and a documented exit code for bad input,
a refused path and a signal; no library traceback. The signal test runs every entry point as a real process,
sends SIGINT or SIGTERM at a point of real work, and reruns on what it left."""

import errno
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import ROOT, compose
from mlflow import MlflowClient

from feclip import cli
from feclip.data import synthetic
from feclip.errors import FeclipError, Terminated
from feclip.jobs.run import main
from feclip.tracking import JobInfo
from feclip.tracking.sync import sync

ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
}
N_TRAIN, N_TEST = 200, 20  # the shared data: enough work per step to land a signal in it


# ---------------------------------------------------------------------------------------- the boundary


@pytest.mark.parametrize(
    "error, code, line",
    [
        (FeclipError("data.root='x' is missing"), 2, "prog: error: data.root='x' is missing"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/d/job/checkpoint"),
            3,
            "prog: error: /d/job/checkpoint: disk full ([Errno 28] No space left on device)",
        ),
        (
            OSError(errno.EPERM, "Operation not permitted", "/d/out"),
            3,
            "prog: error: /d/out: not permitted (read-only or immutable) ([Errno 1] Operation not permitted)",
        ),
        (Terminated(signal.SIGTERM), 143, "prog: stopped by SIGTERM; files are whole"),
        (KeyboardInterrupt(), 130, "prog: stopped by SIGINT; files are whole"),
    ],
)
def test_each_kind_of_failure_is_one_line_and_its_exit_code(capsys, error, code, line):
    def fail():
        raise error

    assert cli.guard(fail, "prog", stopped="files are whole") == code
    assert capsys.readouterr().err == line + "\n"


def test_a_bug_keeps_its_traceback_and_success_is_zero():
    with pytest.raises(ZeroDivisionError):
        cli.guard(lambda: 1 / 0, "prog")
    assert cli.guard(lambda: None, "prog") == cli.EXIT_OK


def test_a_signal_python_swallows_is_sent_again_and_ends_the_work(capfd):
    """A SIGTERM that lands in a weakref callback (garbage collection during the work) raises there, where
    Python only prints "Exception ignored": it is sent again and ends the work, and nothing is printed."""

    class Held:
        pass

    held = Held()
    finalizer = weakref.ref(held, lambda ref: (os.kill(os.getpid(), signal.SIGTERM), sum(range(100))))
    with pytest.raises(Terminated, match="SIGTERM"), cli.signals_as_exceptions():
        del held
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the work goes on after the callback
            sum(range(1000))
    assert time.monotonic() < deadline and finalizer() is None
    assert capfd.readouterr().err == ""


def test_library_logs_lose_their_traceback_and_keep_one_line(capfd):
    """MLflow logs a traceback and the SQL for every locked sqlite call; inside the boundary a library's
    record is one line."""
    logger = logging.getLogger("somelibrary.store")
    logger.addHandler(handler := logging.StreamHandler(sys.stderr))
    logger.propagate = False

    def work():
        try:
            raise RuntimeError("database is locked\n[SQL: SELECT runs.run_uuid FROM runs]")
        except RuntimeError as error:
            logger.exception("SQLAlchemy database error. The following exception is caught.\n%s", error)

    try:
        cli.guard(work, "prog")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert capfd.readouterr().err == (
        "SQLAlchemy database error. The following exception is caught. database is locked "
        "[SQL: SELECT runs.run_uuid FROM runs]\n"
    )


# ------------------------------------------------------------------------- signals at a point of real work


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """Shared: a synthetic set and a model trained on it (job folder `train`, untracked)."""
    tmp = tmp_path_factory.mktemp("signals")
    synthetic.ensure(tmp / "hdmap", n_train=N_TRAIN, n_test=N_TEST, seed=0)
    main(compose(*_data(tmp, tmp / "cache0"), "aux.max_normals=20"), tmp / "train", JobInfo("C", "default"))
    return tmp


def _data(tmp: Path, cache: Path, root: Path | None = None) -> list[str]:
    return [
        f"data.root={root or tmp / 'hdmap'}",
        f"data.synthetic.n_train={N_TRAIN}",
        f"data.synthetic.n_test={N_TEST}",
        f"eval.split.refs_per_condition={N_TEST // 4}",  # of N_TEST // 2 test/good per condition
        "train.epochs=1",
        f"cache_dir={cache}",
        "tracking=off",
        "eval.figures=false",
    ]


def _any(folder: Path, pattern: str) -> bool:
    return folder.is_dir() and next(folder.rglob(pattern), None) is not None


def _runs_logged(db: Path) -> bool:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as connection:
            return connection.execute("select count(*) from runs").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def _status(folder: Path) -> str:
    return json.loads((folder / "run.json").read_text())["status"]


@dataclass(frozen=True)
class Case:
    """One entry point at one point of real work: its one-line prefix, its command `(tmp, work) -> argv`,
    `started(tmp)`: the work is under way, `stopped(tmp, work)`: what the stop must leave, `rerun(tmp,
    work)`: the same work again on what it left, finishing cleanly."""

    prog: str
    command: Callable[[Path, Path], list[str]]
    started: Callable[[Path], bool]
    stopped: Callable[[Path, Path], None]
    rerun: Callable[[Path, Path], None]


def _train_command(tmp: Path, work: Path, fresh_data: bool) -> list[str]:
    root = tmp / "hdmap" if fresh_data else work / "hdmap"
    return [
        str(ROOT / "run.py"),
        *_data(tmp, tmp / "cache", root),
        "eval.batch_size=1",
        f"hydra.run.dir={tmp / 'job'}",
    ]


def _train_rerun(tmp: Path, work: Path, fresh_data: bool) -> None:
    root = tmp / "hdmap" if fresh_data else work / "hdmap"
    main(compose(*_data(tmp, tmp / "cache", root)), tmp / "job", JobInfo("C", "default"))
    assert _status(tmp / "job") == "FINISHED" and _status(tmp / "job" / "attempts" / "1") == "KILLED"


def _killed(tmp: Path, work: Path) -> None:
    assert _status(tmp / "job") == "KILLED"
    assert not _any(tmp / "cache", "*.tmp*") and not _any(tmp, ".*.tmp")  # no temporary left behind


def _predict_command(tmp: Path, work: Path) -> list[str]:
    return [
        str(ROOT / "run.py"),
        "mode=predict",
        f"model.checkpoint={work / 'train' / 'checkpoint'}",
        f"predict.input={work / 'hdmap' / 'domain_C' / 'train' / 'good'}",
        "predict.batch_size=1",
        "tracking=off",
        f"hydra.run.dir={tmp / 'job'}",
    ]


def _predict_rerun(tmp: Path, work: Path) -> None:
    main(compose(*_predict_command(tmp, work)[1:-1]), tmp / "job", JobInfo("p", "p"))
    assert (
        _status(tmp / "job") == "FINISHED"
        and len((tmp / "job" / "predictions.csv").read_text().splitlines()) == 201
    )


def _synthetic_command(tmp: Path, work: Path) -> list[str]:
    return ["-m", "feclip.data.synthetic", "--out", str(tmp / "set"), "--n-train", "300", "--n-test", "100"]


def _synthetic_stopped(tmp: Path, work: Path) -> None:
    assert (tmp / "set" / synthetic.PARTIAL).exists() and not (tmp / "set" / synthetic.MARKER).exists()


def _synthetic_rerun(tmp: Path, work: Path) -> None:
    rerun = subprocess.run(
        [sys.executable, *_synthetic_command(tmp, work)], env=ENV, capture_output=True, timeout=120
    )
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (tmp / "set" / synthetic.MARKER).exists() and len(list((tmp / "set").rglob("*.tiff"))) == 4 * 600


def _sync_command(tmp: Path, work: Path) -> list[str]:
    return ["-m", "feclip.tracking", "sync", str(work / "train"), "--uri", f"sqlite:///{tmp / 'mlflow.db'}"]


def _sync_stopped(tmp: Path, work: Path) -> None:
    assert _status(work / "train") == "FINISHED"  # the job's record is untouched


def _sync_rerun(tmp: Path, work: Path) -> None:
    sync(work / "train", f"sqlite:///{tmp / 'mlflow.db'}")
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("feclip").experiment_id])
    assert run.info.status == "FINISHED" and "auroc" in run.data.metrics


CASES = {
    "run.py generating data": Case(
        "feclip",
        lambda tmp, work: _train_command(tmp, work, fresh_data=True),
        lambda tmp: _any(tmp / "hdmap", "*.tiff"),
        _killed,
        lambda tmp, work: _train_rerun(tmp, work, fresh_data=True),
    ),
    "run.py writing the token cache": Case(
        "feclip",
        lambda tmp, work: _train_command(tmp, work, fresh_data=False),
        lambda tmp: _any(tmp / "cache", "*.tmp.npy"),
        _killed,
        lambda tmp, work: _train_rerun(tmp, work, fresh_data=False),
    ),
    "run.py mode=predict scoring": Case(
        "feclip",
        _predict_command,
        lambda tmp: "predict: " in (tmp / "stderr.log").read_text(),
        _killed,
        _predict_rerun,
    ),
    "python -m feclip.data.synthetic writing TIFFs": Case(
        "feclip.data.synthetic",
        _synthetic_command,
        lambda tmp: _any(tmp / "set", "*.tiff"),
        _synthetic_stopped,
        _synthetic_rerun,
    ),
    "python -m feclip.tracking sync logging a run": Case(
        "feclip.tracking",
        _sync_command,
        lambda tmp: _runs_logged(tmp / "mlflow.db"),
        _sync_stopped,
        _sync_rerun,
    ),
}


# each point of work with one signal, both signals over the cases (the guard's handling of each, unit-tested
# above, is the same at every point; a real process per case keeps what the signal interrupts real)
SIGNALED = [(name, (signal.SIGINT, signal.SIGTERM)[i % 2]) for i, name in enumerate(CASES)]


@pytest.mark.parametrize(("name", "sig"), SIGNALED, ids=[f"{n}-{s.name}" for n, s in SIGNALED])
def test_a_signal_during_real_work_is_one_line_its_exit_code_and_a_clean_rerun(work, tmp_path, name, sig):
    case = CASES[name]
    tmp = tmp_path / "case"
    tmp.mkdir()
    with open(tmp / "stdout.log", "w") as out, open(tmp / "stderr.log", "w") as err:
        process = subprocess.Popen(
            [sys.executable, *case.command(tmp, work)], cwd=tmp, env=ENV, stdout=out, stderr=err
        )
        try:
            deadline = time.monotonic() + 90
            while not case.started(tmp):
                assert process.poll() is None, (
                    f"ended before the work started:\n{(tmp / 'stderr.log').read_text()}"
                )
                assert time.monotonic() < deadline, "the work did not start within 90 s"
                time.sleep(0.02)
            process.send_signal(sig)
            code = process.wait(timeout=60)
        finally:
            process.kill()
    stderr = (tmp / "stderr.log").read_text()
    assert code == cli.SIGNAL_EXIT_BASE + sig, stderr[-3000:]
    assert "Traceback" not in stderr + (tmp / "stdout.log").read_text()
    (line,) = [line for line in stderr.splitlines() if line.startswith(f"{case.prog}: ")]
    assert line.startswith(f"{case.prog}: stopped by {sig.name}; ")
    case.stopped(tmp, work)
    case.rerun(tmp, work)
