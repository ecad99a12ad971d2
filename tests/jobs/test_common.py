"""The record every job writes: valid JSON with undefined metrics as null and their reasons, the random-init
and deployable flags; metric warnings are collected without being hidden; each figure reaches the run once;
a sweep's job that computes what another of its jobs computes is folded into it; a job of a sweep closes
with one line, a single job with its block."""

import json
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import compose

from feclip.evaluation.metrics import MetricWarning, hdmap_metrics
from feclip.jobs.common import (
    RANDOM_INIT_NOTE,
    JobRecord,
    _claim,
    closing_block,
    closing_line,
    metric_warnings,
    metrics_record,
    tracked_job,
)
from feclip.tracking import JobInfo
from feclip.tracking.local import METRICS_FILE, RUN_FILE, read_json, update_run
from feclip.tracking.sweep import folded_line, sweep_outcome
from feclip.tracking.tracker import Tracker


def test_undefined_metrics_are_null_with_their_reason():
    with pytest.warns(MetricWarning, match="'warm' has only good samples"), metric_warnings() as notes:
        metrics = hdmap_metrics([0.1, 0.9, 0.2, 0.3], [0, 1, 0, 0], ["cold", "cold", "warm", "warm"])
    assert math.isnan(metrics["auroc_warm"]) and any("'warm'" in n for n in notes)
    record = metrics_record(metrics, random_init=True, notes=notes)
    text = json.dumps(record, allow_nan=False)  # strict JSON: no bare NaN
    loaded = json.loads(text)
    assert (
        loaded["metrics"]["auroc_warm"] is None
        and "'warm' has only good samples" in loaded["undefined"]["auroc_warm"]
    )
    assert loaded["metrics"]["auroc"] == metrics["auroc"] and "auroc" not in loaded["undefined"]
    assert loaded["random_init"] is True and loaded["note"] == RANDOM_INIT_NOTE
    assert "acc_val" in loaded["undefined"]  # no validation scores were given


def test_a_pretrained_run_has_no_random_init_note():
    record = metrics_record({"auroc": 0.9}, random_init=False, notes=[])
    assert record["random_init"] is False and "note" not in record and record["undefined"] == {}


def test_a_run_that_reads_test_labels_says_so_in_metrics_json_and_its_closing_block(tmp_path):
    update_run(tmp_path, run_name="r", job_folder=str(tmp_path), status="RUNNING")
    record = JobRecord(tmp_path, Tracker("", "e", "r", {}, enabled=False), random_init=False, notes=[])
    record.mark_deployable(["gating=oracle routes each image by its test condition"])
    record.log_metrics({"auroc": 0.9})
    written = json.loads((tmp_path / METRICS_FILE).read_text())
    assert written["deployable"] is False and "gating=oracle" in written["not_deployable_because"][0]
    run = read_json(tmp_path / RUN_FILE)
    assert run["tags"] == {"deployable": "false", "deployable_reason": written["not_deployable_because"][0]}
    closing = closing_block(run, {}, key_metrics=(), tracker=record.tracker)
    assert "NOT DEPLOYABLE: gating=oracle routes each image by its test condition" in closing
    record.mark_deployable([])
    assert read_json(tmp_path / RUN_FILE)["tags"]["deployable"] == "true"


def _artifact_files(client, run_id: str, path: str | None = None) -> list[str]:
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_each_figure_reaches_the_run_once_as_its_image_also_after_a_sync(tmp_path):
    from mlflow import MlflowClient
    from PIL import Image

    from feclip.jobs.common import upload_folder
    from feclip.tracking.sync import sync

    folder = tmp_path / "job"
    (folder / "figures").mkdir(parents=True)
    Image.new("RGB", (40, 20), "white").save(folder / "figures" / "roc.png")
    (folder / "figures" / "notes.txt").write_text("not a logged image")
    (folder / METRICS_FILE).write_text('{"metrics": {}}')
    (folder / "config.yaml").write_text("seed: 0\n")
    update_run(folder, run_name="C", job_id="j1", experiment="e", status="FINISHED")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with Tracker(uri, "e", "C", {}) as tracker:
        JobRecord(folder, tracker, random_init=True, notes=[]).log_images([folder / "figures" / "roc.png"])
        upload_folder(tracker, folder)
    assert read_json(folder / RUN_FILE)["images"] == ["figures/roc.png"]
    client = MlflowClient(uri)
    files = _artifact_files(client, tracker.run_id)
    pngs = [f for f in files if f.endswith(".png")]
    assert len(pngs) == 1 and pngs[0].startswith("images/roc+step+0+")  # no figures/roc.png beside it
    assert "figures/notes.txt" in files and METRICS_FILE in files and len(files) == len(set(files))
    for _ in range(2):  # a sync (a new run: no job id tag) logs the image as the job did; again: nothing
        (run_id,) = sync(folder, uri)
        assert run_id != tracker.run_id
        synced = _artifact_files(client, run_id)
        pngs = [f for f in synced if f.endswith(".png")]
        assert len(pngs) == 1 and pngs[0].startswith("images/roc+step+0+"), synced
        assert "figures/notes.txt" in synced and len(synced) == len(set(synced))


def test_a_sweep_runs_each_computation_once_and_names_the_grid_points_it_folded(tmp_path, capsys):
    sweep, ran = tmp_path / "sweep", []

    def body(cfg, folder, record):
        ran.append(folder.name)
        return {"auroc": 0.75}

    def job(number: int, *overrides: str) -> dict:
        info = JobInfo("C-x", "x", overrides=overrides, sweep_dir=str(sweep))
        return tracked_job(compose("tracking=off", *overrides), sweep / str(number), info, body)

    job(0, "method=patchcore", "freq=dct")
    assert job(1, "method=patchcore", "freq=fft") == {"auroc": 0.75}  # the metrics of the job it is
    job(2, "method=feclip", "freq=fft")  # FE-CLIP reads freq: its own computation
    job(0, "method=patchcore", "freq=dct")  # a rerun of job 0 in its folder holds its own claim
    assert ran == ["0", "2", "0"]
    record = read_json(sweep / "1" / RUN_FILE)
    assert record["status"] == "SKIPPED" and record["folded_into"]["job"] == "0"
    assert record["reason"] == "same as job 0 (C-x): patchcore does not read freq=fft"
    assert "feclip: folded job 1 (C-x), not run: same as job 0" in capsys.readouterr().out
    outcome = sweep_outcome(sweep)
    assert outcome.ok and outcome.counts["skipped"] == 1
    assert folded_line("s", outcome.folded) == (
        "feclip sweep s: folded 1 grid point, not run: the same computation as another job (the method does "
        "not read the overrides in brackets): job 1 [freq=fft] = job 0"
    )


def test_of_jobs_of_one_identity_started_at_once_exactly_one_runs(tmp_path):
    """The joblib or SLURM race: every job claims the identity at the same moment; one wins."""
    start = threading.Barrier(8)

    def claim(number: int):
        start.wait()
        record = {
            "job": str(number),
            "job_folder": str(tmp_path / str(number)),
            "run_name": "r",
            "overrides": [],
        }
        return _claim(tmp_path, "0123456789abcdef", record)

    with ThreadPoolExecutor(8) as pool:
        held = list(pool.map(claim, range(8)))
    (winner,) = [number for number, other in enumerate(held) if other is None]
    assert all(other["job"] == str(winner) for other in held if other is not None)
    assert [p.name for p in (tmp_path / ".identities").iterdir()] == ["0123456789abcdef.json"]


def test_a_job_of_a_sweep_closes_with_one_line_and_a_single_job_with_its_block(tmp_path, capsys):
    """In a sweep each job prints one line (`✓ name  auroc  seconds  folder`, the reason for a failed one);
    the sweep's closing lines carry the table, the parent run and how to serve the UI, once."""
    cfg = compose("tracking.enabled=false", "tracking.experiment=closing")

    def body(cfg, folder, record):
        return {"auroc": 0.712, "acc_val": 0.6}

    sweep = JobInfo("C-fft", "fft", sweep_dir=str(tmp_path))
    tracked_job(cfg, tmp_path / "3", sweep, body, key_metrics=("auroc", "acc_val"))
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("✓ C-fft  auroc 0.7120 (random-init)  ") and line.endswith(f"  {tmp_path / '3'}")
    tracked_job(cfg, tmp_path / "job", JobInfo("C-fft", "fft"), body, key_metrics=("auroc", "acc_val"))
    block = capsys.readouterr().out.splitlines()
    assert (
        block[0].startswith("feclip job C-fft: FINISHED in ") and "auroc 0.7120  acc_val 0.6000" in block[1]
    )


def test_the_closing_line_of_a_failed_job_says_why_and_names_its_folder_from_the_launch_directory(tmp_path):
    record = {
        "run_name": "B",
        "status": "FAILED",
        "reason": "OSError: 000003.tiff: not a readable TIFF\nmore",
        "started": 100.0,
        "ended": 172.0,
        "job_folder": str(tmp_path / "multirun" / "1"),
    }
    line = closing_line(record, {}, headline="auroc", root=tmp_path)
    assert line == "✗ B  FAILED: OSError: 000003.tiff: not a readable TIFF more  1 min 12 s  multirun/1"
