"""feclip.progress: bars carry the running job's name; a sweep's board counts its jobs (done / total, failed,
ETA), prints what the jobs wrote above its lines one whole line at a time, and jobs in other processes reach
it through their files; warnings never land inside a bar."""

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from rich.console import Console
from tqdm import tqdm

from feclip import progress
from feclip.progress import (
    Board,
    Tally,
    job_label,
    job_row,
    label,
    lines_above_bars,
    shown_line,
    sweep_eta,
    sweep_line,
    tally,
)
from feclip.tracking.sweep import MlflowSweepCallback, job_records, sweep_dir_of

ROOT = Path(__file__).resolve().parents[1]


def test_bars_are_labelled_with_the_job_inside_it_only():
    assert label("epoch 1/9") == "epoch 1/9"
    with job_label("C-fft"):
        assert label("epoch 1/9") == "C-fft · epoch 1/9"
        with job_label("inner"):
            assert label("predict") == "inner · predict"
        stream = io.StringIO()
        assert list(progress.progress(range(3), "predict", file=stream)) == [0, 1, 2]
        assert "C-fft · predict" in stream.getvalue()
    assert label("predict") == "predict"


# ---------------------------------------------------------------------------------- counting a sweep


def test_the_eta_is_the_mean_finished_duration_for_what_is_left_shared_by_the_slots():
    assert sweep_eta([], [10.0], waiting=3, slots=2) is None  # nothing finished yet: no guess
    # mean 30 s; one waiting job (30 s) + the running ones' rest (20 s, 10 s; an overdue one 0 s) over 2 slots
    assert sweep_eta([20.0, 40.0], [10.0, 20.0, 45.0], waiting=1, slots=2) == pytest.approx(30.0)


def test_the_sweep_line_counts_jobs_from_their_records_and_states():
    now = 1000.0
    records = {
        "s/0": {"status": "FINISHED", "started": 900.0, "ended": 930.0},
        "s/1": {"status": "FAILED", "started": 900.0, "ended": 905.0},
        "s/2": {"status": "SKIPPED"},
        "s/3": {"status": "RUNNING", "started": 990.0},
    }
    states = {"s/3": {"started": 990.0}, "s/4": {"started": 980.0}, "s/5": {"ended": 995.0, "status": None}}
    counted = tally(8, records, states, now)
    assert (counted.done, counted.failed) == (4, 2)  # s/5 ended without a run.json: a refused config
    assert sorted(counted.running) == [10.0, 20.0] and counted.durations == [30.0] and counted.waiting == 2
    counted.slots = 2
    # 2 waiting x 30 s + the running ones' rest (20 s, 10 s), over 2 slots: 45 s
    assert counted.eta == pytest.approx(45.0)
    line = sweep_line(counted, elapsed=125)
    assert "4/8 done · 2 failed · 2 running · 2:05 · ETA 0:45" in line and line.startswith("sweep ")
    assert "ETA" not in sweep_line(Tally(None, done=3), elapsed=5)  # another sweeper: no total, no ETA
    assert "jobs starting" in sweep_line(Tally(4), elapsed=5)


def test_a_job_counts_once_when_the_sweep_folder_is_named_through_dot_dot(tmp_path):
    """The board matches a job's run.json (found under the sweep folder) with its state (folder: Hydra's
    normalised `output_dir`): `hydra.sweep.dir=sub/../sweep` must name both the same way."""
    sweep = {"dir": "sub/../sweep"}
    config = OmegaConf.create({"hydra": {"sweep": sweep, "runtime": {"cwd": str(tmp_path)}}})
    output_dir = os.path.abspath(tmp_path / "sub/../sweep" / "0")  # what Hydra gives the job
    (tmp_path / "sweep" / "0").mkdir(parents=True)
    (tmp_path / "sub").mkdir()
    record = {"status": "FINISHED", "started": 1.0, "ended": 2.0}
    (tmp_path / "sweep" / "0" / "run.json").write_text(json.dumps(record))
    records = job_records(sweep_dir_of(config))
    assert list(records) == [output_dir]
    counted = tally(1, records, {output_dir: {"ended": 2.0, "status": "FINISHED"}}, now=3.0)
    assert (counted.done, counted.failed, counted.running) == (1, 0, [])


def test_a_job_row_shows_its_bar_and_fits_the_width():
    state = {"label": "C-fft", "started": 100.0}
    assert job_row(state, 142.0, 100, 8) == "C-fft      0:42  starting"
    assert job_row({**state, "overrides": ["domain=C"]}, 142.0, 100, 8).endswith("starting  domain=C")
    bar = {"n": 4, "total": 8, "elapsed": 2.0, "prefix": "epoch 1/1", "unit": "batch", "at": 140.0}
    row = job_row({**state, "bar": {**bar, "postfix": "loss=1.79"}}, 142.0, 100, 8)
    assert row.startswith("C-fft      0:42  epoch 1/1:  50%|") and "4/8 [00:04<" in row and "loss=1.79" in row
    assert len(row) <= 100
    assert job_row({**state, "after": "predict"}, 142.0, 100, 8).endswith("after predict")


def test_captured_lines_show_as_the_terminal_would_without_hydras_timestamp():
    assert shown_line("[2026-12-07 22:33:40,733][root][WARNING] - No weights\n") == "root WARNING: No weights"
    assert shown_line("[2026-12-07 22:32:43,913][HYDRA] #0 : domain=A") == "[HYDRA] #0 : domain=A"
    assert shown_line("bar  10%\rbar 100%| 4/4\n") == "bar 100%| 4/4"
    assert shown_line("  \r   \n") is None


# ------------------------------------------------------------------------------------------- the board


def _board(tmp_path: Path, total: int = 3) -> tuple[Board, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=False, color_system=None)
    board = Board(
        tmp_path, total, console=console, started=time.time() - 65, records=lambda: job_records(tmp_path)
    )
    board.folder.mkdir(parents=True, exist_ok=True)
    return board, out


def test_the_board_prints_each_jobs_lines_whole_and_its_closing_line_once(tmp_path):
    board, out = _board(tmp_path)
    folder = tmp_path / "0"
    bar = {"n": 2, "total": 8, "elapsed": 1.0, "prefix": "epoch 1/1", "unit": "batch", "at": time.time()}
    state = {"key": "0", "label": "A-fft", "started": time.time() - 42, "folder": str(folder), "bar": bar}
    (board.folder / "0.json").write_text(json.dumps(state))
    # a bar's redraws, then a warning, then half a line the job has not finished writing
    (board.folder / "0.log").write_text(
        "epoch 1/1:  10%|#\repoch 1/1:  20%|##\r[2026-12-07 10:00:00,000][py.warnings][WARNING] - "
        "UserWarning: careful (x.py:3)\nstill wri"
    )
    board.poll()
    assert out.getvalue().splitlines() == ["A-fft │ py.warnings WARNING: UserWarning: careful (x.py:3)"]
    *rows, sweep = board.rows(100)
    assert len(rows) == 1 and re.match(r"A-fft   0:\d\d  epoch 1/1:  25%\|", rows[0]) and len(rows[0]) < 100
    assert re.search(r"0/3 done · 0 failed · 1 running · 1:\d\d · ETA after the first job", sweep)
    with open(board.folder / "0.log", "a") as log:
        log.write("ting\n")
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"status": "FINISHED", "started": 1.0, "ended": 31.0}))
    line = "✓ A-fft  auroc 0.7120  30 s  0"
    (board.folder / "0.json").write_text(
        json.dumps({**state, "ended": time.time(), "status": "FINISHED", "line": line})
    )
    board.poll()
    board.poll()
    assert out.getvalue().splitlines()[1:] == ["A-fft │ still writing", line]
    *rows, sweep = board.rows(100)
    assert rows == [] and "1/3 done · 0 failed · jobs starting" in sweep and "ETA 1:00" in sweep


def test_the_board_shows_a_warning_record_every_job_prints_once(tmp_path):
    board, out = _board(tmp_path)
    record = "[2026-12-07 10:00:00,000][root][WARNING] - No pretrained weights loaded"
    for key in ("0", "1"):
        (board.folder / f"{key}.json").write_text(json.dumps({"key": key, "label": f"job{key}"}))
        (board.folder / f"{key}.log").write_text(f"{record}\nTraceback (most recent call last):\n")
    board.poll()
    assert out.getvalue().splitlines() == [
        "job0 │ root WARNING: No pretrained weights loaded",
        "job0 │ Traceback (most recent call last):",
        "job1 │ Traceback (most recent call last):",
    ]
    assert board.repeated == 1


JOB = """
import os, sys, time, warnings
from feclip import progress
from feclip.progress import lines_above_bars
channel = progress.job_started({sweep!r}, "1", folder={folder!r}, overrides=["domain=C", "seed=1"])
with lines_above_bars(), progress.job_label("C"):
    for _ in progress.progress(range(3), "epoch 1/1"):
        pass
    print("a line of the job")
    warnings.warn("careful")
    os.write(2, b"from C code\\n")
    progress.job_done("FINISHED", "OK C")
progress.finish_job()
print("after the job")
"""


def test_a_job_in_another_process_reaches_the_board_through_its_files(tmp_path):
    """A worker process of the joblib launcher: its bars become numbers in its state file, all it writes
    (print, a warning, a C-level write) goes to its log, its closing line to its state; nothing to the
    terminal while the board draws, and its file descriptors are back after the job."""
    console = tmp_path / "console"
    console.mkdir()
    (console / "board.json").write_text(
        json.dumps({"pid": os.getpid(), "host": __import__("socket").gethostname(), "swept": ["domain"]})
    )
    script = JOB.format(sweep=str(tmp_path), folder=str(tmp_path / "1"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "after the job\n" and done.stderr == ""
    log = (console / "1.log").read_text().splitlines()
    assert log[0] == "a line of the job" and log[2] == "from C code"
    assert log[1].endswith("UserWarning: careful (<string>:10)")  # a log record, one line
    state = json.loads((console / "1.json").read_text())
    assert state["label"] == "C" and state["overrides"] == ["domain=C"] and state["after"] == "epoch 1/1"
    assert (state["status"], state["line"]) == ("FINISHED", "OK C") and state["ended"]


def test_no_board_without_a_terminal(tmp_path, monkeypatch):
    assert not progress.board_wanted()  # pytest captures stdout: not a terminal
    assert progress.start_board(tmp_path, 2) is None and not (tmp_path / "console").exists()
    assert progress.job_started(tmp_path, "0") is None  # a job without a board writes as usual


def test_a_board_that_cannot_start_gives_the_output_back_and_the_sweep_goes_on(tmp_path, monkeypatch, capfd):
    """The live display fails after the process's output went to the sweep's log: file descriptors 1 and 2
    come back, no board record is left for jobs to write into, and one line says so."""

    def refuse(self):
        raise OSError("no terminal after all")

    monkeypatch.setattr(progress, "board_wanted", lambda: True)
    monkeypatch.setattr("rich.live.Live.start", refuse)
    before = os.fstat(1).st_ino, os.fstat(2).st_ino
    assert progress.start_board(tmp_path, 2) is None
    assert (os.fstat(1).st_ino, os.fstat(2).st_ino) == before
    assert progress.board_of(tmp_path) is None
    err = capfd.readouterr().err.strip().splitlines()
    assert err == [
        "feclip: the sweep's board did not start (OSError('no terminal after all')): plain progress bars"
    ]


# -------------------------------------------------------------------------------- warnings and bars


def test_a_warning_during_a_bar_prints_on_its_own_line(capsys):
    with lines_above_bars():
        bar = tqdm(range(10), desc="epoch 1/1", file=sys.stderr, mininterval=0)
        for step in bar:
            if step == 3:
                warnings.warn("careful", UserWarning, stacklevel=1)
        bar.close()
    err = capsys.readouterr().err
    shown = [segment for line in err.split("\n") for segment in line.split("\r")[-1:]]
    (warning,) = [line for line in shown if "careful" in line]
    assert warning.startswith("UserWarning: careful (test_progress.py:") and "epoch" not in warning


def test_the_sweep_callback_opens_and_closes_a_jobs_channel_when_a_board_draws(tmp_path):
    """Hydra's on_job_start / on_job_end of the sweep callback (in the job's process) reach the board: the
    job's state file says it started, then that it ended; without a board they do nothing."""
    config = OmegaConf.create(
        {
            "hydra": {
                "mode": "RunMode.MULTIRUN",
                "sweep": {"dir": str(tmp_path)},
                "runtime": {"cwd": str(tmp_path), "output_dir": str(tmp_path / "3")},
                "job": {"num": 3},
                "overrides": {"task": ["domain=C"]},
            }
        }
    )
    callback = MlflowSweepCallback()
    callback.on_job_start(config)
    assert not (tmp_path / progress.CONSOLE_DIR / "3.json").exists()  # no board
    board = {"pid": os.getpid(), "host": socket.gethostname(), "swept": ["domain"]}
    (tmp_path / progress.CONSOLE_DIR).mkdir()
    (tmp_path / progress.CONSOLE_DIR / progress.BOARD_FILE).write_text(json.dumps(board))
    callback.on_job_start(config)
    state = json.loads((tmp_path / progress.CONSOLE_DIR / "3.json").read_text())
    assert state["overrides"] == ["domain=C"] and state.get("ended") is None
    callback.on_job_end(config)
    assert json.loads((tmp_path / progress.CONSOLE_DIR / "3.json").read_text())["ended"] > 0
