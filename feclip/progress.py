"""What a job shows while it runs, and the board of a sweep on a terminal.

One job (`python run.py`): tqdm bars labelled with the job's run name (`job_label`, `progress`); warnings and
library log records go through logging and `tqdm.write`, so they print above the bars, never into one
(`lines_above_bars`).

A sweep on a terminal (`python run.py -m ...`, stdout and stderr the same terminal): the jobs may run in
other processes (`hydra/launcher=joblib`), and bars of several processes cannot share lines. So one process
draws: the `Board` of the sweep's process, which shows one line per running job and one sweep line (jobs
done / total, failed, running, elapsed, ETA), and prints everything else above them, one whole line at a
time. Jobs talk to it through files in `<sweep dir>/console/` (`JobChannel`):

    board.json        the board is drawing (its pid and host)
    <job>.json        a job's label, its bar's numbers (tqdm's format_dict), its status and closing line
    <job>.log         what a job's process wrote to stdout / stderr (file descriptors 1 and 2)
    sweep.log         what the sweep's own process wrote meanwhile (Hydra's lines, a basic launcher's job)

Nothing else writes to the terminal while the board draws: the sweep's process and each job's process have
their file descriptors 1 and 2 pointed at these logs, so C libraries, subprocesses and handlers that hold the
old `sys.stderr` are caught as well. The logs stay in the sweep folder. Without a terminal (a pipe, a file,
CI), or with `FECLIP_BOARD=0`, there is no board and jobs write as a single job does.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from feclip.cli import one_line_library_logs, override_key
from feclip.files import write_text

_LABEL = [""]
CONSOLE_DIR = "console"  # <sweep dir>/console: the board's files
BOARD_FILE = "board.json"
SWEEP_LOG = "sweep.log"
ENV_BOARD = "FECLIP_BOARD"  # 0: no board, even on a terminal
STATE_EVERY_S = 0.5  # a job rewrites its state at most this often (bars)
DONE = ("FINISHED", "SKIPPED")
FAILED = ("FAILED", "KILLED")
MARKS = {"FINISHED": "✓", "SKIPPED": "↷", "FAILED": "✗", "KILLED": "✗"}


@contextlib.contextmanager
def job_label(name: str) -> Iterator[None]:
    """Bars started inside the block read '<name> · <desc>'; on a board, the job's line is named `name`."""
    previous, _LABEL[0] = _LABEL[0], name
    if _CHANNEL[0] is not None:
        _CHANNEL[0].update(label=name, force=True)
    try:
        yield
    finally:
        _LABEL[0] = previous


def label(desc: str) -> str:
    """desc, prefixed with the current job's name when there is one."""
    return f"{_LABEL[0]} · {desc}" if _LABEL[0] else desc


def progress(iterable: Iterable, desc: str, **options) -> tqdm:
    """tqdm over `iterable` with the job-labelled `desc`; `options` go to tqdm. In a job of a sweep with a
    board, the bar is drawn by the board (its numbers go to the job's state file)."""
    channel = _CHANNEL[0]
    if channel is not None:
        return ReportedBar(iterable, desc=desc, channel=channel, **options)
    return tqdm(iterable, desc=label(desc), **options)


def job_done(status: str, line: str) -> None:
    """A job's closing line: to the board (which prints it above its lines and counts the job), else
    printed."""
    if _CHANNEL[0] is not None:
        _CHANNEL[0].update(status=status, line=line, bar=None, ended=time.time(), force=True)
    else:
        print(line, flush=True)


# ------------------------------------------------------------------------------- warnings, log records


@contextlib.contextmanager
def lines_above_bars() -> Iterator[None]:
    """Python warnings become one-line log records (`py.warnings`: `UserWarning: message (file.py:12)`), and
    every library's record is one line (`feclip.cli.one_line_library_logs`); the root logger's console
    output goes through `tqdm.write`, which lifts this process's bars while the line is printed: a warning
    never lands inside a bar."""
    shown = warnings.showwarning

    def log_warning(message, category, filename, lineno, file=None, line=None):
        if file is not None:  # written to a file the caller chose
            shown(message, category, filename, lineno, file, line)
            return
        where = f"{Path(filename).name}:{lineno}"
        logging.getLogger("py.warnings").warning("%s: %s (%s)", category.__name__, message, where)

    warnings.showwarning = log_warning
    try:
        with one_line_library_logs(), logging_redirect_tqdm():
            yield
    finally:
        warnings.showwarning = shown


# ------------------------------------------------------------------------------------ the job's side


class _Sink(io.TextIOBase):
    """Where a reported bar's own drawing goes: nowhere."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        return len(text)


BAR_KEYS = ("n", "total", "elapsed", "prefix", "unit", "unit_scale", "rate", "postfix", "unit_divisor")


class ReportedBar(tqdm):
    """A tqdm bar whose numbers go to the job's state file (`format_dict`), for the board to draw."""

    def __init__(self, *args, channel: JobChannel, **kwargs):
        self._channel = channel
        kwargs.pop("file", None)
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), STATE_EVERY_S)
        kwargs["dynamic_ncols"] = False
        super().__init__(*args, file=_Sink(), **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg != "":  # "": tqdm clearing a bar that does not stay (leave=False); `close` reports it
            numbers = self.format_dict
            self._channel.bar(self, {key: numbers.get(key) for key in BAR_KEYS})
        return True

    def close(self) -> None:
        was_open = not self.disable  # tqdm's close disables the bar: a second close does nothing
        super().close()
        if was_open:
            self._channel.bar_closed(self)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class JobChannel:
    """A job's side of the board: its state file (label, bar, status, closing line) and, in a process of
    its own, its stdout and stderr (file descriptors 1 and 2) in its log file."""

    def __init__(self, console_dir: Path, key: str, *, capture: bool, **state):
        self.folder, self.key, self.capture = Path(console_dir), key, capture
        self.state = {"key": key, "label": f"#{key}", "started": time.time(), "pid": os.getpid(), **state}
        self._bars: dict[int, dict] = {}  # live bars by id, the last updated last
        self._written = 0.0
        self._saved: tuple[int, int] | None = None

    @property
    def state_file(self) -> Path:
        return self.folder / f"{self.key}.json"

    @property
    def log_file(self) -> Path:
        return self.folder / f"{self.key}.log"

    def open(self) -> JobChannel:
        if self.capture:
            self._saved = redirect_output(self.log_file)
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(AttributeError, ValueError, io.UnsupportedOperation):
                    stream.reconfigure(line_buffering=True)  # a file now: each line as it comes
        self.update(force=True)
        return self

    def close(self) -> None:
        if self.state.get("ended") is None:
            self.update(ended=time.time(), bar=None, force=True)
        if self._saved is not None:
            restore_output(self._saved)
            self._saved = None

    def update(self, force: bool = False, **fields) -> None:
        self.state.update(fields)
        now = time.monotonic()
        if force or now - self._written >= STATE_EVERY_S:
            self._written = now
            with contextlib.suppress(OSError):  # the board is a view: never fail a job for it
                write_text(self.state_file, json.dumps(self.state, default=str))

    def bar(self, bar: tqdm, numbers: dict) -> None:
        self._bars.pop(id(bar), None)
        self._bars[id(bar)] = numbers
        self.update(bar={**numbers, "at": time.time()}, force=numbers.get("n") == numbers.get("total"))

    def bar_closed(self, bar: tqdm) -> None:
        closed = self._bars.pop(id(bar), None)
        after = closed["prefix"] if closed else self.state.get("after")
        last = list(self._bars.values())[-1] if self._bars else None
        self.update(bar=None if last is None else {**last, "at": time.time()}, after=after, force=True)


_CHANNEL: list[JobChannel | None] = [None]


def redirect_output(path: Path) -> tuple[int, int]:
    """Point file descriptors 1 and 2 at `path` (appended); returns the old ones for `restore_output`."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(1), os.dup(2)
    target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(target, 1)
        os.dup2(target, 2)
    finally:
        os.close(target)
    return saved


def restore_output(saved: tuple[int, int]) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    for fd, old in zip((1, 2), saved, strict=True):
        os.dup2(old, fd)
        os.close(old)


def board_of(sweep_dir: str | Path) -> dict | None:
    """The record of the board drawing the sweep in `sweep_dir` on this host, else None."""
    record = _read_json(Path(sweep_dir) / CONSOLE_DIR / BOARD_FILE)
    return record if record.get("host") == socket.gethostname() else None


def job_started(sweep_dir: str | Path, key: str, **state) -> JobChannel | None:
    """Hydra's `on_job_start` of a job of a sweep: when a board draws the sweep, open the job's channel
    (its stdout and stderr go to its log when it runs in a process of its own). `state`: what the board
    shows before the job names itself (overrides, folder)."""
    finish_job()
    board = board_of(sweep_dir)
    if board is None:
        return None
    if "overrides" in state and board.get("swept"):
        swept = set(board["swept"])
        state["overrides"] = [o for o in state["overrides"] if override_key(o) in swept]
    folder = Path(sweep_dir) / CONSOLE_DIR
    _CHANNEL[0] = JobChannel(folder, str(key), capture=board.get("pid") != os.getpid(), **state).open()
    return _CHANNEL[0]


def finish_job() -> None:
    """Hydra's `on_job_end`: close the job's channel (its file descriptors back as they were)."""
    channel, _CHANNEL[0] = _CHANNEL[0], None
    if channel is not None:
        channel.close()


# ----------------------------------------------------------------------------------- a sweep's start


def parsed_sweep(overrides, params) -> list:
    """Hydra's parsed overrides of a sweep: `hydra.sweeper.params` ({key: values}), then the command line's
    `overrides`; Hydra's error on a bad one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    arguments = [f"{key}={value}" for key, value in (params or {}).items()]
    arguments += [str(o) for o in overrides or []]
    return OverridesParser.create().parse_overrides(arguments)


def count_jobs(overrides, params, sweeper: str = "BasicSweeper") -> int | None:
    """How many jobs Hydra's basic sweeper launches for the sweep `overrides` and `hydra.sweeper.params`;
    None for another sweeper."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    if "BasicSweeper" not in sweeper:
        return None
    parsed = parsed_sweep(overrides, params)
    return sum(len(batch) for batch in BasicSweeper.split_arguments(parsed, None))


def start_line(sweep_dir: str, jobs: int | None, launcher: str = "", at_once: int | None = None) -> str:
    """`feclip sweep: 4 jobs, joblib launcher, 2 at a time; folders in multirun/2026-12-07/10-00-00`."""
    parts = [f"{jobs} jobs" if jobs is not None else "jobs as its sweeper chooses"]
    if launcher:
        parts.append(f"{launcher} launcher" + (f", {at_once} at a time" if at_once else ""))
    return f"feclip sweep: {', '.join(parts)}; folders in {sweep_dir}"


def argv_overrides(argv: list[str]) -> list[str]:
    """The task overrides of a command line: `key=value` words, not Hydra's flags nor `hydra.` keys."""
    words = [w for w in argv if "=" in w and not w.startswith("-")]
    return [w for w in words if not w.lstrip("+~").startswith(("hydra.", "hydra/"))]


class SweepStart(Callback):
    """A Hydra callback, first in `hydra.callbacks` (conf/config.yaml) and light to import: it prints what a
    sweep is about to run as soon as Hydra composed it, before the other callbacks load (torch, mlflow:
    seconds, tens of seconds on a busy machine) and long before the first job shows a line. Hydra calls no
    hook that early, so the line is printed when Hydra creates the callback, from interpolations of the
    `hydra` node (the overrides from the command line: passed through an interpolation, an override's own
    `${...}` would be resolved out of place)."""

    def __init__(
        self,
        mode: str = "",
        sweep_dir: str = "",
        launcher: str = "",
        n_jobs: int | None = None,
        params=None,
        sweeper: str = "",
    ):
        if not str(mode).endswith("MULTIRUN"):
            return
        try:
            jobs = count_jobs(argv_overrides(sys.argv[1:]), params, sweeper)
        except Exception:  # Hydra reports a bad override itself
            jobs = None
        name = launcher.rsplit(".", 1)[-1].removesuffix("Launcher").lower()
        at_once = 1 if name == "basic" else n_jobs
        if isinstance(at_once, int) and at_once < 0:  # joblib: -1 all cores, -2 all but one, ...
            at_once = max(1, (os.cpu_count() or 1) + 1 + at_once)
        if isinstance(at_once, int) and jobs:
            at_once = min(at_once, jobs)
        print(start_line(sweep_dir, jobs, name, at_once), flush=True)


# ---------------------------------------------------------------------------------- the board's side


def clock(seconds: float) -> str:
    """`0:42`, `12:05`, `1:02:05`."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def duration(seconds: float) -> str:
    """`12 s`, `3 min 05 s`, `1 h 02 min`."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def sweep_eta(durations: list[float], running: list[float], waiting: int, slots: int) -> float | None:
    """Seconds until the sweep ends: the mean duration of its finished jobs for each waiting job and for
    what each running job has left (`running`: their elapsed seconds), shared by `slots` parallel jobs;
    None before a job finished."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    work = waiting * mean + sum(max(mean - elapsed, 0.0) for elapsed in running)
    return work / max(slots, 1)


@dataclass
class Tally:
    """The jobs of a sweep as the board counts them."""

    total: int | None
    done: int = 0
    failed: int = 0
    running: list[float] = field(default_factory=list)  # elapsed seconds of each running job
    durations: list[float] = field(default_factory=list)  # seconds of each finished job
    slots: int = 1  # the most jobs seen running at once

    @property
    def waiting(self) -> int:
        return max(0, (self.total or 0) - self.done - len(self.running))

    @property
    def eta(self) -> float | None:
        if self.total is None:
            return None
        return sweep_eta(self.durations, self.running, self.waiting, self.slots)


def tally(total: int | None, records: dict[str, dict], states: dict[str, dict], now: float) -> Tally:
    """Count the sweep's jobs by folder: `records` their run.json (status, started, ended), `states` their
    board states (a job that ended without a run.json, e.g. a refused config, counts as failed)."""
    counted = Tally(total)
    for folder in sorted(set(records) | set(states)):
        record, state = records.get(folder, {}), states.get(folder, {})
        status = record.get("status")
        if status in DONE or status in FAILED:
            counted.done += 1
            counted.failed += status in FAILED
            if status == "FINISHED" and record.get("ended") and record.get("started"):
                counted.durations.append(record["ended"] - record["started"])
        elif state.get("ended"):
            counted.done += 1
            counted.failed += state.get("status") not in DONE
        elif status == "RUNNING" or state:
            counted.running.append(now - (state.get("started") or record.get("started") or now))
    return counted


def sweep_line(counted: Tally, elapsed: float, width: int = 24) -> str:
    """`sweep ████▌───── 1/4 done · 0 failed · 2 running · 1:05 · ETA 0:40`."""
    total = counted.total
    parts = [f"{counted.done}/{total} done" if total else f"{counted.done} done", f"{counted.failed} failed"]
    starting = not counted.running and counted.done < (total or 1)
    parts += ["jobs starting" if starting else f"{len(counted.running)} running", clock(elapsed)]
    eta = counted.eta
    if eta is not None:
        parts.append(f"ETA {clock(eta)}" if counted.done < (total or 0) else "ETA 0:00")
    elif total:
        parts.append("ETA after the first job")
    bar = ""
    if total:
        filled = width * counted.done / total
        bar = "█" * int(filled) + ("▌" if filled - int(filled) >= 0.5 else "")
        bar = " " + bar + "─" * (width - len(bar))
    return f"sweep{bar} " + " · ".join(parts)


def job_row(state: dict, now: float, width: int, name_width: int) -> str:
    """One running job: `A-fft    0:42  epoch 1/1:  50%|████▌    | 4/8 [00:01<00:01, 2.9batch/s, loss=1.79]`;
    between bars, what it did last."""
    head = f"{state.get('label', '?'):<{name_width}}  {clock(now - state.get('started', now)):>5}  "
    bar = state.get("bar")
    if bar:
        numbers = {key: bar.get(key) for key in BAR_KEYS if bar.get(key) is not None}
        numbers["elapsed"] = numbers.get("elapsed", 0) + max(0.0, now - bar.get("at", now))
        meter = tqdm.format_meter(**numbers, ncols=max(width - len(head), 20))
        return head + meter
    if state.get("after"):
        return head + f"after {state['after']}"
    overrides = " ".join(state.get("overrides", []))
    return head + "starting" + (f"  {overrides}" if overrides else "")


HYDRA_TIME = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\]")
HYDRA_RECORD = re.compile(r"^\[([^\]]+)\]\[(\w+)\] - (.*)$")
REPEATABLE = re.compile(r"^[\w.]+ (WARNING|INFO): ")  # a log record shown once for all jobs


def shown_line(text: str) -> str | None:
    """A captured line as the terminal shows it: what follows the last carriage return (a bar's last
    state), Hydra's timestamp left out (`[root][WARNING] - msg` -> `root WARNING: msg`); None for blank."""
    text = text.rstrip("\n").split("\r")[-1].rstrip()
    if not text.strip():
        return None
    text = HYDRA_TIME.sub("", text, count=1)
    record = HYDRA_RECORD.match(text)
    return f"{record.group(1)} {record.group(2)}: {record.group(3)}" if record else text


class _Tail:
    """The new whole lines of a growing file."""

    def __init__(self, path: Path):
        self.path, self.offset, self.rest = path, 0, b""

    def lines(self, final: bool = False) -> list[str]:
        try:
            with open(self.path, "rb") as file:
                file.seek(self.offset)
                data = file.read()
        except OSError:
            data = b""
        self.offset += len(data)
        *whole, self.rest = (self.rest + data).split(b"\n")
        if final and self.rest:
            whole, self.rest = [*whole, self.rest], b""
        return [line.decode("utf-8", "replace") for line in whole]


def board_wanted() -> bool:
    """A board draws a sweep when stdout and stderr are one terminal (not dumb) and FECLIP_BOARD is not 0."""
    if os.environ.get(ENV_BOARD, "1") == "0" or os.environ.get("TERM") == "dumb":
        return False
    try:
        if not (os.isatty(1) and os.isatty(2)):
            return False
        one, two = os.fstat(1), os.fstat(2)
    except OSError:
        return False
    return (one.st_dev, one.st_ino) == (two.st_dev, two.st_ino)


class Board:
    """The sweep's lines on the terminal (see the module docstring). `poll` reads the jobs' files and prints
    their new lines; `rows` is what the live area shows. `records()`: the jobs' run.json records by folder
    (their statuses and durations count the jobs). `start` / `stop` run it: file descriptors 1 and 2
    of this process go to `sweep.log` meanwhile, the terminal is drawn through a duplicate of them."""

    def __init__(
        self,
        sweep_dir: str | Path,
        total: int | None,
        *,
        console=None,
        interval: float = 0.5,
        started: float | None = None,
        swept: list[str] = (),
        records: Callable[[], dict[str, dict]] = dict,
    ):
        self.sweep_dir, self.swept, self.records = Path(sweep_dir), list(swept), records
        self.folder = self.sweep_dir / CONSOLE_DIR
        self.total, self.interval = total, interval
        self.started = started or time.time()
        self.console = console
        self.states: dict[str, dict] = {}
        self.counted = Tally(total)
        self._tails: dict[str, _Tail] = {}
        self._closed: set[str] = set()
        self._seen: set[str] = set()
        self.repeated = 0  # records not shown again (`_repeats`)
        self._slots = 1
        self._live = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._saved: tuple[int, int] | None = None
        self._terminal = None

    # the lines above ---------------------------------------------------------------------------------

    def _print(self, text: str, style: str = "", prefix: str = "") -> None:
        from rich.text import Text

        line = Text()
        if prefix:
            line.append(f"{prefix} │ ", style="dim")
        line.append(text, style=style)
        self.console.print(line, soft_wrap=True, highlight=False)

    def poll(self, final: bool = False) -> None:
        """Print what the jobs wrote since the last poll (a job's closing line after its own lines), then
        what the sweep's process wrote, and count the jobs."""
        for path in sorted(self.folder.glob("*.json"), key=_job_order):
            if path.name == BOARD_FILE:
                continue
            state = _read_json(path)
            if not state:
                continue
            key = state.get("key", path.stem)
            self.states[key] = state
            for text in self._tail(f"{key}.log", final or bool(state.get("ended"))):
                shown = shown_line(text)
                if shown is not None and not self._repeats(shown):
                    self._print(shown, prefix=state.get("label", key))
            if state.get("ended") and key not in self._closed:
                self._closed.add(key)
                if state.get("line"):
                    style = "green" if state.get("status") in DONE else "red"
                    self._print(state["line"], style=style)
        for text in self._tail(SWEEP_LOG, final):  # after the jobs' closing lines: Hydra's next job
            shown = shown_line(text)
            if shown is not None:
                self._print(shown)
        by_folder = {s.get("folder") or f"#{k}": s for k, s in self.states.items()}
        self.counted = tally(self.total, self.records(), by_folder, time.time())
        self._slots = max(self._slots, len(self.counted.running))
        self.counted.slots = self._slots

    def _repeats(self, shown: str) -> bool:
        """Whether `shown` is a warning or info record another job printed already (the random-init note of
        every job): counted, not shown again."""
        if not REPEATABLE.match(shown):
            return False
        if shown in self._seen:
            self.repeated += 1
            return True
        self._seen.add(shown)
        return False

    def _tail(self, name: str, final: bool) -> list[str]:
        tail = self._tails.setdefault(name, _Tail(self.folder / name))
        return tail.lines(final)

    def rows(self, width: int) -> list[str]:
        """One line per running job (in job order), then the sweep line."""
        now = time.time()
        running = [
            s for k, s in sorted(self.states.items(), key=lambda i: _key_order(i[0])) if not s.get("ended")
        ]
        name_width = min(max([len(s.get("label", "")) for s in running] + [5]), 28)
        lines = [job_row(state, now, width - 1, name_width) for state in running]
        return [*lines, sweep_line(self.counted, now - self.started)]

    def renderable(self):
        from rich.console import Group
        from rich.text import Text

        width = self.console.size.width
        *jobs, sweep = self.rows(width)
        lines = [Text(line, no_wrap=True, overflow="ellipsis") for line in jobs]
        return Group(*lines, Text(sweep, style="bold", no_wrap=True, overflow="ellipsis"))

    # running it -------------------------------------------------------------------------------------------

    def start(self) -> Board:
        from rich.console import Console
        from rich.live import Live

        self.folder.mkdir(parents=True, exist_ok=True)
        self._terminal = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
        if self.console is None:
            self.console = Console(file=self._terminal, highlight=False)
        self._fit()
        self._saved = redirect_output(self.folder / SWEEP_LOG)
        try:
            board = {"pid": os.getpid(), "host": socket.gethostname(), "swept": self.swept}
            write_text(self.folder / BOARD_FILE, json.dumps(board))
            self._live = Live(
                self.renderable(),
                console=self.console,
                auto_refresh=False,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._live.start()
        except BaseException:
            self._live = None
            self._release()
            raise
        self._thread = threading.Thread(target=self._run, name="feclip-board", daemon=True)
        self._thread.start()
        return self

    def _fit(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            size = os.get_terminal_size(self._terminal.fileno())
            self.console.size = (size.columns, size.lines)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._fit()
                self.poll()
                self._live.update(self.renderable(), refresh=True)
            except Exception as error:  # a view: it stops drawing, the sweep goes on
                self._print(f"feclip: the sweep's board stopped: {error!r}", style="red")
                return

    def stop(self) -> None:
        """Print what is left, take the live lines away, give the terminal back to this process."""
        if self._live is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            self.poll(final=True)
            if self.repeated:
                folder = self.folder
                with contextlib.suppress(ValueError):
                    folder = folder.relative_to(Path.cwd())
                shown_once = f"feclip: {self.repeated} repeated log records shown once"
                self._print(f"{shown_once} (all: {folder}/<job>.log)", style="dim")
        self._live.stop()
        self._live = None
        self._release()

    def _release(self) -> None:
        """Jobs see no board any more; file descriptors 1 and 2 back to this process; the terminal's copy
        closed."""
        (self.folder / BOARD_FILE).unlink(missing_ok=True)
        if self._saved is not None:
            restore_output(self._saved)
            self._saved = None
        with contextlib.suppress(OSError):
            self._terminal.close()


def _key_order(key: str) -> tuple:
    return (0, int(key), "") if key.isdigit() else (1, math.inf, key)


def _job_order(path: Path) -> tuple:
    return _key_order(path.stem)


_BOARD: list[Board | None] = [None]


def start_board(
    sweep_dir: str | Path,
    total: int | None,
    started: float | None = None,
    swept: list[str] = (),
    records: Callable[[], dict[str, dict]] = dict,
) -> Board | None:
    """Start the sweep's board when `board_wanted`; None otherwise. `swept`: the keys the sweep varies (a
    starting job's line shows its values); `records`: as `Board`'s."""
    stop_board()
    if not board_wanted():
        return None
    board = Board(sweep_dir, total, started=started, swept=swept, records=records)
    try:
        _BOARD[0] = board.start()
    except Exception as error:  # a view: the sweep goes on without it, with plain bars
        print(f"feclip: the sweep's board did not start ({error!r}): plain progress bars", file=sys.stderr)
    return _BOARD[0]


def stop_board() -> None:
    board, _BOARD[0] = _BOARD[0], None
    if board is not None:
        board.stop()
