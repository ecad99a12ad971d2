"""The tracking commands, each inside the error boundary (`feclip.cli.guard`):

    feclip sync <job or sweep folder> [--uri URI]        (python -m feclip.tracking sync)
    feclip report --experiment <name> [--metrics auroc acc_oracle ...] [--out report/] [--sweep-dir <folder>]
                                                         (python -m feclip.tracking report, scripts/report.py)

sync logs finished job folders into a store afterwards (idempotent); report writes the variant x domain
tables of an experiment's finished runs (report.md + CSVs), with the docs/rivals.md anchors beside them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from feclip import tracking
from feclip.cli import guard, load
from feclip.files import writable_folder
from feclip.tracking.report import build_folder_report, build_report

BOUNDARY = "feclip.tracking"  # the prefix of the one-line errors of `python -m feclip.tracking`


def sync_main(
    argv: Sequence[str] | None = None, prog: str = "python -m feclip.tracking sync", name: str = BOUNDARY
) -> int:
    """Log a job folder or a sweep folder into a store; the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description="log a job folder or a sweep folder into a store")
    parser.add_argument("folder", help="a job folder (with run.json) or a sweep folder (with sweep.json)")
    parser.add_argument("--uri", default=None, help="target store (default: the one the job was tracked in)")
    args = parser.parse_args(argv)
    stopped = "the runs logged so far are complete; run the same command again to finish"
    return guard(lambda: _sync(args.folder, args.uri), name, stopped=stopped)


def _sync(folder: str, uri: str | None) -> int:
    run_ids = load("feclip.tracking.sync:sync")(folder, uri)  # MLflow and the sweep's code: only to log
    print(f"synced {len(run_ids)} runs from {folder}")
    return 0


def report_main(
    argv: Sequence[str] | None = None, prog: str = "python -m feclip.tracking report", name: str = BOUNDARY
) -> int:
    """Variant x domain report of tracked runs (markdown + CSV); the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=report_main.__doc__.split(";")[0])
    parser.add_argument(
        "--uri", default=None, help="tracking URI (default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)"
    )
    parser.add_argument(
        "--experiment", default="feclip", help="MLflow experiment (config tracking.experiment)"
    )
    parser.add_argument("--metrics", nargs="+", default=["auroc", "acc_oracle", "acc_val"])
    parser.add_argument("--out", default="report", help="output folder for report.md and the CSVs")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--parent-run-id", default=None, help="only the children of this sweep parent run")
    scope.add_argument(
        "--sweep-dir", default=None, help="the jobs of this sweep folder, read from their folders (no store)"
    )
    args = parser.parse_args(argv)
    return guard(lambda: _report(args), name, stopped=f"{args.out} may hold an older report")


def _report(args: argparse.Namespace) -> int:
    writable_folder(args.out, "--out")
    if args.sweep_dir:
        print(build_folder_report(args.sweep_dir, args.metrics, args.out))
        return 0
    uri = tracking.resolve_tracking_uri(args.uri)
    print(build_report(uri, args.experiment, args.metrics, args.out, args.parent_run_id))
    return 0
