"""`feclip compare`: finished runs against a baseline variant, paired on identical images.

    feclip compare multirun/2026-12-08/10-00-00 [more sweep or job folders ...] \\
        --baseline patchcore.tiny --metric acc_fa1_cold --domain C [--part test] [--out delta.csv]

Reads the job folders (run.json, metrics.json, scores.csv), keeps per domain the runs scored on the same
images (`eval_set`; the others are named in one line), and prints one row per variant and domain:
"Δ vs baseline [95 % CI], p_holm, n seeds × N images" and the minimum detectable difference
(`feclip.evaluation.compare.compare_runs`). Select variants on `--part dev`, claim on `--part test`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from feclip.cli import guard
from feclip.errors import FeclipError
from feclip.files import write_text
from feclip.tracking.report import comparison, comparison_lines, folder_runs, same_images


def parse_args(argv=None, prog: str = "python -m feclip.compare") -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders or job folders")
    parser.add_argument(
        "--baseline",
        required=True,
        help="a variant label (patchcore·tiny), typed with a dot (patchcore.tiny), or a unique prefix of one",
    )
    parser.add_argument("--metric", default="acc_fa1_cold", help="e.g. acc_fa1_cold, acc_oracle, auroc_cold")
    parser.add_argument("--domain", default=None, help="only this domain (A | B | C | D)")
    parser.add_argument("--part", default="test", choices=["test", "dev"], help="the study part compared")
    parser.add_argument("--bootstrap", type=int, default=2000, help="resamples (seeds, then images)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as CSV here")
    return parser.parse_args(argv)


def _compare(args: argparse.Namespace) -> None:
    missing = [str(f) for f in args.folders if not f.is_dir()]
    if missing:
        raise FeclipError(f"{', '.join(missing)}: no such folder; expected sweep or job folders")
    runs = folder_runs(*args.folders)
    if args.domain is not None:
        runs = runs[runs["domain"] == args.domain]
    runs, left_out = same_images(runs)
    table = comparison(runs, args.metric, args.baseline, part=args.part, n=args.bootstrap)
    for line in left_out:
        print(f"feclip.compare: note: {line}", file=sys.stderr)
    print("\n".join(comparison_lines(table, args.part)))
    if args.out is not None:
        write_text(args.out, table.to_csv(index=False))


def main(argv=None, prog: str = "python -m feclip.compare", name: str = "feclip.compare") -> int:
    """The exit code; `prog`: the command's name in its usage, `name`: the prefix of its one-line errors."""
    args = parse_args(argv, prog)
    return guard(lambda: _compare(args), name)


if __name__ == "__main__":
    sys.exit(main())
