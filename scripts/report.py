"""Variant x domain report of tracked runs (markdown + CSV), with the baselines.md anchors beside them.

    python scripts/report.py --uri sqlite:///mlflow.db --experiment feclip --metrics auroc acc_oracle \
        acc_val --out report/
    python scripts/report.py --experiment default_sweep --sweep-dir multirun/2025-11-28/23-50-01  # one sweep
"""

from __future__ import annotations

import argparse

from feclip import tracking
from feclip.cli import guard
from feclip.files import writable_folder
from feclip.tracking.report import build_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    scope.add_argument("--sweep-dir", default=None, help="only the runs of this Hydra sweep folder")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guard(lambda: report(args), "report", stopped=f"{args.out} may hold an older report")


def report(args: argparse.Namespace) -> int:
    parent = args.parent_run_id
    if args.sweep_dir:
        parent = tracking.parent_run_id_for_sweep(args.sweep_dir)
        if parent is None:
            raise tracking.TrackingError(f"{args.sweep_dir} has no {tracking.PARENT_FILE}; was tracking on?")
    writable_folder(args.out, "--out")
    path = build_report(
        tracking.resolve_tracking_uri(args.uri), args.experiment, args.metrics, args.out, parent
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
