"""Seed against seed of one variant, through the paired comparison (`feclip.evaluation.compare`): each seed of
the variant is made a row of its own and compared with seed 0 on the same images (one run each: paired DeLong
for AUROC, exact McNemar for accuracy). It shows how large a difference one seed alone makes.

    python experiments/008_decidable_studies/seed_vs_seed.py <sweep folder> --variant "feclip · default" \\
        --metric auroc_cold
"""

import argparse

from feclip.evaluation.compare import compare_runs
from feclip.tracking.report import folder_runs, run_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep")
    parser.add_argument("--variant", required=True)
    parser.add_argument("--metric", default="auroc_cold")
    args = parser.parse_args()
    runs = folder_runs(args.sweep)
    runs = runs[runs["variant"] == args.variant].copy()
    runs["variant"] = "seed " + runs["seed"].astype(str)
    table = compare_runs(run_scores(runs), args.metric, baseline="seed 0", n=2000)
    print(f"| {args.variant}: seed vs seed 0 | {args.metric} | mdd (points) |")
    print("|---|---|---|")
    for row in table.itertuples():
        print(f"| {row.variant} | {row.text} | {100 * row.mdd:.2f} |")


if __name__ == "__main__":
    main()
