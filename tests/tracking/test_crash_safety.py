"""Crash safety with real processes: a tracking server killed by its PID mid-training, sync afterwards, a bad
job inside a sweep (basic and joblib launchers), SIGTERM / SIGINT, resuming a sweep, a rerun in the folder
of a SIGKILLed job, a locked store, a full store disk, a truncated record. Bounded in time."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, compose, full_disk, run_cli, small_data, start_cli, wait_for_epochs
from mlflow import MlflowClient
from mlflow_server import running_mlflow_server

from feclip.data import synthetic
from feclip.jobs.common import tracked_job
from feclip.jobs.run import main
from feclip.tracking import JobInfo, Tracker
from feclip.tracking.__main__ import main as tracking_cli
from feclip.tracking.local import JobFolderError, archive_attempt, read_history, update_run
from feclip.tracking.sync import sync

RESULT_FILES = (
    "config.yaml",
    "run.json",
    "history.csv",
    "metrics.json",
    "scores.csv",
    "checkpoint",
    "figures",
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def _job(tmp: Path, *extra: str, folder: str = "job") -> list[str]:
    """One job on the tiny synthetic set under `tmp`, its folder `tmp/<folder>`."""
    return [*small_data(tmp), "domain=A", "train.epochs=12", f"hydra.run.dir={tmp / folder}", *extra]


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _params_and_metrics(run) -> tuple[dict, dict]:
    """The run's config and results: not where it was tracked, nor the host's `system/*` samples (how many
    a job gets depends on how long it ran; the local record keeps none)."""
    params = {k: v for k, v in run.data.params.items() if not k.startswith("tracking.") and k != "hydra"}
    return params, {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")}


def test_a_killed_server_costs_at_most_the_budget_and_sync_completes_the_run(tmp_path):
    reference_uri = f"sqlite:///{tmp_path / 'reference.db'}"
    reference_job = [
        *_job(tmp_path, folder="reference"),
        f"tracking.uri={reference_uri}",
        "tracking.experiment=e",
    ]
    reference_process = start_cli(
        reference_job, tmp_path, "reference.log"
    )  # meanwhile: the server and the job
    try:
        with running_mlflow_server(tmp_path / "server") as server:
            args = [
                *_job(tmp_path),
                f"tracking.uri={server.uri}",
                "tracking.experiment=e",
                "tracking.budget_s=6",
            ]
            job = start_cli(args, tmp_path)
            wait_for_epochs(tmp_path / "job", 2, job)
            os.killpg(server.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            assert job.wait(timeout=240) == 0, (tmp_path / "job.log").read_text()[-3000:]
        after_kill_s = time.monotonic() - killed_at
        assert reference_process.wait(timeout=240) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        reference_process.kill()  # a no-op once it has ended
    (reference,) = _runs(reference_uri, "e")
    folder = tmp_path / "job"
    assert all((folder / name).exists() for name in RESULT_FILES)
    record = json.loads((folder / "run.json").read_text())
    assert record["status"] == "FINISHED" and record["synced"] is False and "after" in record["lost"]
    assert "python -m feclip.tracking sync" in (tmp_path / "job.log").read_text()
    assert after_kill_s < 6 + 60  # the budget plus the rest of the (tiny) job
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    sync(folder, fresh)
    (synced,) = _runs(fresh, "e")
    assert synced.info.status == "FINISHED"
    assert _params_and_metrics(synced) == _params_and_metrics(reference)
    history = MlflowClient(fresh).get_metric_history(synced.info.run_id, "train_total")
    assert [m.step for m in history] == list(range(12))
    artifacts = {a.path for a in MlflowClient(fresh).list_artifacts(synced.info.run_id)}
    assert {"metrics.json", "scores.csv", "checkpoint", "images"} <= artifacts and "figures" not in artifacts


def test_sync_twice_and_after_a_half_logged_run_leaves_one_complete_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_cli([*_job(tmp_path), f"tracking.uri={uri}", "tracking.experiment=e", "train.epochs=2"], tmp_path)
    (original,) = _runs(uri, "e")
    client = MlflowClient(uri)
    client.delete_tag(original.info.run_id, "domain")  # a run logged halfway: a tag, metrics, a status lost
    client.set_terminated(original.info.run_id, "RUNNING")
    for _ in range(2):
        sync(tmp_path / "job", uri)
    (run,) = _runs(uri, "e")
    assert run.info.run_id == original.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["domain"] == "A" and run.data.metrics == original.data.metrics
    assert len(client.get_metric_history(run.info.run_id, "train_total")) == 2
    other = f"sqlite:///{tmp_path / 'other.db'}"
    sync(tmp_path / "job", other)
    sync(tmp_path / "job", other)
    assert len(_runs(other, "e")) == 1


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_bad_job_does_not_end_the_sweep(tmp_path, launcher):
    synthetic.ensure(tmp_path / "hdmap", n_train=40, n_test=40, seed=0)
    broken = tmp_path / "hdmap" / "domain_B" / "test" / "good" / "000003.tiff"
    broken.write_bytes(b"not a tiff")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "domain=A,B,C", *small_data(tmp_path), f"tracking.uri={uri}", "tracking.experiment=bad"]
    args += [f"hydra.sweep.dir={tmp_path / 'multirun'}", "eval.figures=false"]
    if launcher == "joblib":
        args += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    result = run_cli(args, tmp_path, check=False)
    assert result.returncode == 1, result.stderr[-3000:]
    runs = _runs(uri, "bad")
    (parent,) = [r for r in runs if r.data.tags.get("feclip.parent") == "true"]
    children = {r.data.tags["domain"]: r for r in runs if r.data.tags.get("mlflow.parentRunId")}
    assert {d: r.info.status for d, r in children.items()} == {
        "A": "FINISHED",
        "B": "FAILED",
        "C": "FINISHED",
    }
    assert "000003.tiff: not a readable TIFF" in children["B"].data.tags["failure_reason"]
    counts = {k: parent.data.tags[f"feclip.children_{k}"] for k in ("finished", "failed", "never_started")}
    assert counts == {"finished": "2", "failed": "1", "never_started": "0"} and parent.info.status == "FAILED"
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("feclip: failed job B-feclip·dct [domain=B ") and "000003.tiff" in last


def test_a_signal_ends_the_job_killed_with_its_files(tmp_path):
    """SIGTERM (a SLURM time limit); SIGINT at real work: tests/test_cli.py."""
    sig = signal.SIGTERM
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = start_cli(
        [*_job(tmp_path, "train.epochs=200"), f"tracking.uri={uri}", "tracking.experiment=sig"], tmp_path
    )
    wait_for_epochs(tmp_path / "job", 2, job)
    job.send_signal(sig)
    assert job.wait(timeout=120) != 0
    (run,) = _runs(uri, "sig")
    assert run.info.status == "KILLED" and sig.name in run.data.tags["failure_reason"]
    record = json.loads((tmp_path / "job" / "run.json").read_text())
    assert record["status"] == "KILLED" and sig.name in record["reason"]
    assert (
        len({s for s, _, _ in read_history(tmp_path / "job")}) >= 2
        and (tmp_path / "job" / "config.yaml").exists()
    )


def test_skip_finished_reruns_only_what_is_missing(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [
        "-m",
        "domain=A,C",
        *small_data(tmp_path, n=20),
        f"tracking.uri={uri}",
        "tracking.experiment=resume",
    ]
    common += ["eval.figures=false", "tracking.skip_finished=true"]
    first = start_cli([*common, "train.epochs=12", f"hydra.sweep.dir={tmp_path / 'first'}"], tmp_path)
    wait_for_epochs(tmp_path / "first" / "1", 2, first)  # job 0 (A) finished, job 1 (C) training
    first.send_signal(signal.SIGTERM)
    first.wait(timeout=120)
    statuses = sorted(r.info.status for r in _runs(uri, "resume") if r.data.tags.get("domain"))
    assert statuses == ["FINISHED", "KILLED"]
    run_cli([*common, "train.epochs=12", f"hydra.sweep.dir={tmp_path / 'second'}"], tmp_path)
    records = [json.loads((tmp_path / "second" / str(i) / "run.json").read_text()) for i in (0, 1)]
    assert [r["status"] for r in records] == ["SKIPPED", "FINISHED"]
    finished = [r.data.tags.get("domain") for r in _runs(uri, "resume") if r.info.status == "FINISHED"]
    assert sorted(d for d in finished if d) == ["A", "C"]  # one finished run per job, the parents aside


# ---------------------------------------------------- a rerun, a locked or full store, a truncated record

KILLED_ATTEMPT = """
import sys, time
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import compose
from feclip.jobs.common import tracked_job
from feclip.tracking import JobInfo

def body(cfg, folder, record):
    record.log_metrics({{"total": 1.0}}, step=0)
    print("training", flush=True)
    time.sleep(600)

cfg = compose("tracking.uri={uri}", "tracking.experiment=rerun", "tracking.system_metrics_s=null")
tracked_job(cfg, Path({folder!r}), JobInfo("A", "default"), body)
"""


def test_a_rerun_in_the_folder_of_a_killed_job_starts_clean_and_closes_its_run(tmp_path):
    """SIGKILL, then the same job in the same folder: history.csv held both attempts' rows and the killed
    attempt's MLflow run stayed RUNNING forever."""
    uri, folder = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "job"
    script = KILLED_ATTEMPT.format(tests=str(ROOT / "tests"), uri=uri, folder=str(folder))
    killed = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert killed.stdout.readline() == "training\n"
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    (stale,) = _runs(uri, "rerun")
    assert stale.info.status == "RUNNING"
    cfg = compose("tracking.uri=" + uri, "tracking.experiment=rerun", "tracking.system_metrics_s=null")
    tracked_job(
        cfg, folder, JobInfo("A", "default"), lambda c, f, r: r.log_metrics({"total": 2.0}, step=0) or {}
    )
    assert read_history(folder) == [(0, "total", 2.0)]
    archived = folder / "attempts" / "1"
    assert read_history(archived) == [(0, "total", 1.0)]
    record, old = (json.loads((f / "run.json").read_text()) for f in (folder, archived))
    assert record["status"] == "FINISHED" and old["status"] == "FAILED" and "process died" in old["reason"]
    runs = {r.info.run_id: r for r in _runs(uri, "rerun")}
    assert (
        runs[old["run_id"]].info.status == "FAILED"
        and "process died" in runs[old["run_id"]].data.tags["failure_reason"]
    )
    assert runs[record["run_id"]].info.status == "FINISHED"
    artifacts = {a.path for a in MlflowClient(uri).list_artifacts(record["run_id"])}
    assert "attempts" not in artifacts and {"run.json", "history.csv"} <= artifacts
    sync(folder, uri)
    sync(archived, uri)
    assert sorted(r.info.status for r in _runs(uri, "rerun")) == ["FAILED", "FINISHED"]


def test_a_rerun_while_the_job_still_runs_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    update_run(folder, status="RUNNING", host=socket.gethostname())
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        update_run(folder, pid=sleeper.pid)
        with pytest.raises(JobFolderError, match=f"is in use by a running job \\(pid {sleeper.pid} on "):
            archive_attempt(folder)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert archive_attempt(folder)["status"] == "FAILED"  # its process has ended: archived


LOCK = (
    "import sqlite3, sys, time\n"
    "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
    "db.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(60)"
)


def test_a_locked_sqlite_store_costs_at_most_the_budget_and_prints_no_traceback(tmp_path, capfd):
    """Another writer holding the store: MLflow waited 20 s per call (41 s against a 30 s budget) and logged
    a traceback and the SQL for each."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, "locked", "r", budget_s=4, timeout_s=1) as tracker:
        tracker.log_metrics({"a": 1.0}, step=0)
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCK, str(tmp_path / "mlflow.db")], stdout=subprocess.PIPE
        )
        try:
            assert locker.stdout.readline() == b"locked\n"
            start = time.monotonic()
            tracker.log_metrics({"a": 2.0}, step=1)
            tracker.log_metrics({"a": 3.0}, step=2)
            spent = time.monotonic() - start
        finally:
            locker.kill()
            locker.wait()
    assert spent < 4 + 1.5 and "(sqlite3.OperationalError) database is locked" in tracker.lost
    err = capfd.readouterr().err
    assert "Traceback" not in err and "[SQL:" not in err
    (line,) = [line for line in err.splitlines() if "feclip" in line]
    assert (
        line.startswith(f"feclip: tracking at {uri} stopped: logging metrics failed")
        and "the job goes on" in line
    )


def test_a_full_disk_under_the_store_leaves_the_job_untracked(tmp_path, capfd):
    """A new experiment on a full store disk failed the job with 2 tracebacks; the README promises that a
    tracking failure lets the job go on untracked."""
    with full_disk(tmp_path / "disk") as disk:
        uri = f"sqlite:///{disk / 'mlflow.db'}"
        MlflowClient(uri).search_experiments()  # the store exists, then its disk fills up
        descriptor = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(descriptor, bytes(2**16))
        except OSError as error:
            assert error.errno == errno.ENOSPC
        finally:
            os.close(descriptor)
        cfg = compose(*small_data(tmp_path, n=20), f"tracking.uri={uri}", "tracking.experiment=new")
        cfg.tracking.budget_s, cfg.tracking.timeout_s, cfg.tracking.system_metrics_s = 2.0, 1.0, None
        cfg.eval.figures = False
        metrics = main(cfg, tmp_path / "job", JobInfo("C", "default"))
    record = json.loads((tmp_path / "job" / "run.json").read_text())
    assert metrics is not None and record["status"] == "FINISHED" and record["synced"] is False
    assert (
        "creating the experiment failed ((sqlite3.OperationalError) database or disk is full)"
        in record["lost"]
    )
    assert "Traceback" not in capfd.readouterr().err


def test_sync_of_a_truncated_run_json_is_one_line(tmp_path, capsys):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "run.json").write_text('{"job_id": "abc", "status": "RUNN')
    assert tracking_cli(["sync", str(folder), "--uri", f"sqlite:///{tmp_path / 'store.db'}"]) == 2
    assert capsys.readouterr().err == (
        f"feclip.tracking: error: {folder / 'run.json'}: not valid JSON (Unterminated string starting at: "
        "line 1, column 29; truncated or edited?); expected a record written by feclip\n"
    )
