"""The error boundary of every entry point: `run.py` (train, evaluate, predict), `python -m feclip.tracking
sync`, `python -m feclip.cache`, `python -m feclip.data.synthetic` and `scripts/report.py` run their work in
`guard`, so what a user sees when things fail is one line and one of these exit codes:

    0    done
    1    a sweep with failed jobs (each job's folder and run say why), or a bug (its traceback is printed)
    2    bad input: a config value, a file, a folder, a URI (`FeclipError`)
    3    the system refused a path: disk full, not writable, a file where a folder belongs (an `OSError`)
    130  stopped by SIGINT (Ctrl-C); 143 by SIGTERM (128 + the signal number)

Inside `guard`, SIGINT and SIGTERM raise `Terminated`, so `finally` blocks run (a job's run.json says KILLED)
and the files written so far are whole (`feclip.files`). Library loggers (mlflow, sqlalchemy, open_clip) print
one line per record, never a traceback: their failures reach the user through the caller's own line.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from feclip.errors import FeclipError, Terminated

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_SYSTEM = 0, 1, 2, 3
SIGNAL_EXIT_BASE = 128  # + the signal number: 130 SIGINT, 143 SIGTERM
PATH_ERRNOS = {  # OSErrors about a path the user chose, and what they mean to the user
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "not permitted (read-only or immutable)",
    errno.EROFS: "read-only file system",
    errno.EEXIST: "already exists",
    errno.ENOTDIR: "a file is where a folder is expected",
    errno.EISDIR: "a folder is where a file is expected",
    errno.ENOENT: "does not exist",
    errno.ENAMETOOLONG: "name too long",
}
LINE_LIMIT = 300  # characters of a library's log message that are shown
RESEND_S = 0.05  # a swallowed signal is sent again after this long (`signals_as_exceptions`)


@contextlib.contextmanager
def signals_as_exceptions() -> Iterator[None]:
    """SIGTERM (SLURM's time limit) and SIGINT raise `Terminated` in the main thread, so work ends cleanly.
    Where Python swallows that exception (the signal came during a weakref callback or a `__del__`:
    "Exception ignored in ..."), the signal is sent again a moment later, to land in the work itself.
    Elsewhere (a worker thread) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(number, frame):
        raise Terminated(number)

    def unraisable(info) -> None:
        if not isinstance(info.exc_value, Terminated):
            hook(info)
            return
        signum = info.exc_value.signum
        threading.Timer(RESEND_S, os.kill, (os.getpid(), signum)).start()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = hook
        for sig, old in previous.items():
            signal.signal(sig, old)


def override_key(line: str) -> str:
    """The key of a Hydra override line: `+model.lam=0.3` -> `model.lam`, `~seed` -> `seed`, `freq=dct` ->
    `freq`."""
    return line.split("=", 1)[0].lstrip("+~")


def one_line(text: str, limit: int = LINE_LIMIT) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def one_line_library_logs() -> Iterator[None]:
    """Records of loggers outside feclip keep their first `LINE_LIMIT` characters on one line and lose their
    traceback (MLflow logs a traceback and the SQL for every locked sqlite call). A record factory, so it
    holds whatever handlers the libraries install."""
    factory = logging.getLogRecordFactory()

    def make(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        if not record.name.startswith("feclip"):
            record.msg, record.args = one_line(record.getMessage()), ()
            record.exc_info, record.exc_text, record.stack_info = None, None, None
        return record

    logging.setLogRecordFactory(make)
    try:
        yield
    finally:
        logging.setLogRecordFactory(factory)


def path_error_message(error: OSError) -> str:
    """`<path>: disk full ([Errno 28] No space left on device)`."""
    where = error.filename if error.filename is not None else "a file"
    return f"{where}: {PATH_ERRNOS[error.errno]} ([Errno {error.errno}] {error.strerror})"


def exit_code(error: BaseException) -> tuple[int, str] | None:
    """(exit code, one-line message) for a failure the user can act on; None for a bug."""
    if isinstance(error, KeyboardInterrupt):
        signum = getattr(error, "signum", signal.SIGINT)
        return SIGNAL_EXIT_BASE + signum, f"stopped by {signal.Signals(signum).name}"
    if isinstance(error, FeclipError):
        return EXIT_INPUT, f"error: {one_line(error, 2000)}"
    if isinstance(error, OSError) and error.errno in PATH_ERRNOS:
        return EXIT_SYSTEM, f"error: {path_error_message(error)}"
    return None


def report(error: BaseException, prog: str, stopped: str = "") -> int | None:
    """Print `<prog>: <message>` for a user-facing failure and return its exit code; None for a bug.
    stopped: what an interruption leaves, appended to the line of a signal."""
    found = exit_code(error)
    if found is None:
        return None
    code, message = found
    suffix = f"; {stopped}" if stopped and isinstance(error, KeyboardInterrupt) else ""
    print(f"{prog}: {message}{suffix}", file=sys.stderr, flush=True)
    return code


def load(target: str) -> Callable[..., Any]:
    """The function `module:function` names, its module imported now. Entry points load their work this
    way, so that what is read from the command line first (a mistyped command or config override,
    --version) answers before torch, open_clip and mlflow are imported (seconds)."""
    module, _, function = target.partition(":")
    return getattr(importlib.import_module(module), function)


def guard(main: Callable[[], int | None], prog: str = "feclip", stopped: str = "") -> int:
    """Run `main()` inside the boundary; returns the exit code (main's, or the failure's). A bug keeps its
    traceback. stopped: what an interruption leaves (e.g. `the folder is marked incomplete`)."""
    with one_line_library_logs():
        try:
            with signals_as_exceptions():
                return main() or EXIT_OK
        except (Exception, KeyboardInterrupt) as error:
            code = report(error, prog, stopped)
            if code is None:
                raise
            return code
