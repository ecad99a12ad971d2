"""The one base of every error about the user's input, and the exception a termination signal becomes.

A `FeclipError` names what was wrong (a config key and its value, a file, a folder, a URI) and what was
expected, on one line. Every entry point prints it as `<prog>: error: <message>` and exits 2
(`feclip.cli.guard`); any other exception is a bug and keeps its traceback.
"""

import signal
import sys


class FeclipError(ValueError):
    """A problem with the user's input: a config value, a file, a folder, a URI; the message is one line."""


class Terminated(KeyboardInterrupt):
    """SIGINT (Ctrl-C) or SIGTERM (SLURM's time limit) turned into an exception
    (`feclip.cli.signals_as_exceptions`), so the work ends cleanly: files flushed, a job's run KILLED with
    the signal as the reason. `signum`: the signal's number."""

    def __init__(self, signum: int):
        super().__init__(f"{signal.Signals(signum).name} (signal {signum})")
        self.signum = signum

    def __reduce__(self):  # rebuilt from the number (a joblib worker sends it to the sweep process)
        return type(self), (self.signum,)


def note(message: str) -> None:
    """`feclip: note: <message>` on stderr, one line: something the user should know that does not stop the
    work (entries a listing skipped, a cache entry recomputed)."""
    print(f"feclip: note: {' '.join(message.split())}", file=sys.stderr, flush=True)
