"""The record every job writes: valid JSON with undefined metrics as null and their reasons, the random-init
and deployable flags; metric warnings are collected without being hidden; a job of a sweep closes with one
line, a single job with its block."""

import json
import math

import pytest
from helpers import compose

from feclip.evaluation.metrics import MetricWarning, hdmap_metrics
from feclip.jobs.common import (
    RANDOM_INIT_NOTE,
    JobRecord,
    closing_block,
    closing_line,
    metric_warnings,
    metrics_record,
    tracked_job,
)
from feclip.tracking import JobInfo
from feclip.tracking.local import METRICS_FILE, RUN_FILE, read_json, update_run
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
