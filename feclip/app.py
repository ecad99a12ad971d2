"""The Hydra application: `feclip run` (and its alias `python run.py`) composes the config of `feclip/conf/`
and runs one job, or a sweep with `-m`; `feclip predict` is `feclip run mode=predict` with the model and
the input as arguments.

    feclip run                                    # one job on the embedded default
    feclip run -m domain=A,B,C,D freq=dct,fft     # a sweep: one MLflow run per job under one parent run
    feclip run hydra.searchpath=[file:///my/conf] freq=my_variant    # groups of a config folder of one's own
    feclip predict outputs/<date>/<time>/checkpoint /data/new_maps predict.overlays=true

A bad input stops a single job with one line (exit 2; 3 for a path the system refuses: disk full, not
writable); SIGINT / SIGTERM end it KILLED with one line (exit 130 / 143): `feclip.cli`. In a sweep a failing
job is marked FAILED (its folder and run say why) and the sweep goes on; the process exits 1 when any job
failed or never started. `--help` lists the config groups and their options (`feclip.usage`).
"""

from __future__ import annotations

import argparse
import re
import sys
import traceback
from collections.abc import Sequence

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from feclip import CONF_DIR, cli

PROG = "feclip"
STOPPED = "what was written is whole; a started job's run.json says KILLED"
HELP_FLAGS = ("-h", "--help")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def entry(cfg: DictConfig) -> float | None:
    """One job of Hydra's: its headline metric (what a sweeper minimises or maximises), None when it has
    none. A bad input ends a single job (exit code); in a sweep it fails that job and the others go on."""
    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return cli.load("feclip.jobs.run:main")(cfg)  # after Hydra composed: a mistyped override is fast
    except Exception as error:
        code = cli.report(error, PROG)
        if code is None and not sweep:
            raise  # a bug: its traceback
        if code is None:
            traceback.print_exc()  # a bug in one job: the others still run
        elif not sweep:
            raise SystemExit(code) from None
    return None


def hydra_run(overrides: Sequence[str]) -> int:
    """Hydra's command line on `overrides` (sys.argv is what Hydra parses); the sweep's exit code."""
    saved = sys.argv[1:]
    sys.argv[1:] = list(overrides)
    try:
        entry()
    finally:
        sys.argv[1:] = saved
    return cli.load("feclip.tracking.sweep:sweep_exit_code")()


def main(argv: Sequence[str] | None = None, prog: str = "python run.py", name: str = PROG) -> int:
    """`feclip run [-m] [overrides]`: the exit code. `-h` / `--help`: the config groups, their options and
    the values the registries allow (Hydra's own help: `--hydra-help`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(flag in argv for flag in HELP_FLAGS):
        print(cli.load("feclip.usage:run_help")(prog, argv))
        return cli.EXIT_OK
    return cli.guard(lambda: hydra_run(argv), name, stopped=STOPPED)


def hydra_quoted(value: str) -> str:
    """`value` as one quoted Hydra override value (a path with spaces, brackets, a glob, a quote): quotes and
    the backslashes before a quote or the end are escaped (Hydra's quoted-value grammar)."""
    escaped = re.sub(r"(\\*)('|$)", lambda m: 2 * m[1] + ("\\'" if m[2] else ""), value)
    return f"'{escaped}'"


def predict_main(argv: Sequence[str] | None = None, prog: str = "feclip predict", name: str = PROG) -> int:
    """`feclip predict <checkpoint> <input> [overrides]`: apply a saved model to a folder or glob of TIFFs.

    The same as `feclip run mode=predict model.checkpoint=<checkpoint> predict.input=<input> [overrides]`:
    predictions.csv, summary.json (and overlays) in the job folder; the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog,
        usage="%(prog)s [-h] checkpoint input [key=value ...]",
        description="apply a saved model to a folder or glob of TIFFs (= feclip run mode=predict ...)",
        epilog="key=value: config overrides, e.g. predict.overlays=true predict.operating_point=fa5",
    )
    parser.add_argument("checkpoint", help="a saved model: <job folder>/checkpoint")
    parser.add_argument("input", help="a folder of TIFFs or a glob ('/data/new/*.tiff')")
    args, extra = parser.parse_known_args(argv)
    overrides = [
        "mode=predict",
        f"model.checkpoint={hydra_quoted(args.checkpoint)}",
        f"predict.input={hydra_quoted(args.input)}",
        *extra,
    ]
    return cli.guard(lambda: hydra_run(overrides), name, stopped=STOPPED)
