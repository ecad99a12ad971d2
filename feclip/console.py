"""The `feclip` command (`[project.scripts]`): one program for the entry points of the package.

    feclip run [-m] [group=option ...] [key=value ...]     one job or a sweep (= python run.py)
    feclip predict <checkpoint> <folder|glob> [key=value ...]
    feclip report --experiment <name> [--metrics ...] [--out report/]
    feclip compare <sweep or job folders> --baseline <method>.<variant> [--metric ...]
    feclip sync <job or sweep folder> [--uri URI]
    feclip cache --list | --clear [--older-than DAYS]
    feclip --help | --version

Each command is the package's own entry point (`python -m feclip.compare`, ...) under another name: the same
options, the same error boundary (`feclip.cli`: one line, exit codes 0/1/2/3/130/143) with `feclip` as the
prefix of its lines. A command's module is imported when it runs (`cli.load`), so `--version` and a mistyped
command or config override answer before torch is loaded.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from feclip import __version__, cli
from feclip.errors import FeclipError

PROG = "feclip"


@dataclass(frozen=True)
class Command:
    """A subcommand: `module:function(argv, prog=..., name=...) -> exit code` (loaded when it runs,
    `cli.load`) and one line of help."""

    target: str
    summary: str


COMMANDS = {
    "run": Command(
        "feclip.app:main", "one job, or a sweep with -m, of the composed config (= python run.py)"
    ),
    "predict": Command("feclip.app:predict_main", "apply a saved model to a folder or glob of TIFFs"),
    "report": Command("feclip.tracking.commands:report_main", "variant x domain tables of tracked runs"),
    "compare": Command(
        "feclip.compare:main", "finished runs against a baseline variant, paired on the images"
    ),
    "sync": Command("feclip.tracking.commands:sync_main", "log finished job folders into an MLflow store"),
    "cache": Command("feclip.cache:main", "list or clear the frozen-feature cache"),
}


def overview() -> str:
    """The commands, one line each."""
    width = max(map(len, COMMANDS)) + 2
    lines = [f"  {name:<{width}}{command.summary}" for name, command in COMMANDS.items()]
    return "\n".join(
        [
            f"usage: {PROG} <command> [options]    ({PROG} <command> --help: its options; {PROG} --version)",
            "",
            f"feclip {__version__}: FE-CLIP, PatchCore and WinCLIP anomaly detection on gearbox HDMAP maps.",
            "",
            "commands:",
            *lines,
        ]
    )


def unknown(name: str | None) -> int:
    """A missing or mistyped command: one line, exit 2."""
    what = f"unknown command {name!r}" if name else "no command"
    raise FeclipError(f"{what}; expected one of: {', '.join(COMMANDS)} ({PROG} --help: what each does)")


def main(argv: Sequence[str] | None = None) -> int:
    """The exit code of `feclip <command> ...` (`argv`: the arguments after `feclip`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = argv[0] if argv else None
    if first in ("-V", "--version"):
        print(f"{PROG} {__version__}")
        return cli.EXIT_OK
    if first in ("-h", "--help"):
        print(f"{overview()}\n\n{cli.load('feclip.usage:config_help')()}")
        return cli.EXIT_OK
    if first not in COMMANDS:
        return cli.guard(lambda: unknown(first), PROG)
    return cli.load(COMMANDS[first].target)(argv[1:], prog=f"{PROG} {first}", name=PROG)
