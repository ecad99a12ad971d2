"""Print the synthetic HDMAP generator's section-6 statistics (../shared/docs/hdmap.md) against the targets.

Generates the four domains in memory (no files) and prints: files with max > 1 (6.1), domain C per-image
statistics vs the real CSV (6.2), pooled pixel statistics (6.3), cold/warm gates (6.4), domain C AUROCs and
cold max shares (6.5) and the soft spectral targets (6.6: band energy, APE, SFM, C row contrast).

    python scripts/synthetic_stats.py [--seed 0] [--n-train 1000] [--n-test 1000] [--no-tail-caps]
        [--no-bright-pixels] [--fault-row random]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from feclip.data import stats
from feclip.data.hdmap import DOMAINS
from feclip.data.synthetic import Options, generate_domain

REAL_C = Path(__file__).resolve().parents[1] / "tests/data/fixtures/hdmap_domain_C_image_stats.csv"


def section(title: str, table) -> None:
    print(f"\n## {title}\n{table.to_string() if hasattr(table, 'to_string') else table}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--real-c", type=Path, default=REAL_C, help="real domain-C per-image statistics CSV")
    parser.add_argument("--tail-caps", action=argparse.BooleanOptionalAction, default=Options.tail_caps)
    parser.add_argument(
        "--bright-pixels", action=argparse.BooleanOptionalAction, default=Options.bright_pixels
    )
    parser.add_argument("--fault-row", choices=("fixed", "random"), default=Options.fault_row)
    args = parser.parse_args(argv)
    options = {"tail_caps": args.tail_caps, "bright_pixels": args.bright_pixels, "fault_row": args.fault_row}

    start = time.perf_counter()
    generated = {d: generate_domain(d, args.n_train, args.n_test, args.seed, **options) for d in DOMAINS}
    n_images = sum(len(g.images) for g in generated.values())
    print(f"generated {n_images} images in {time.perf_counter() - start:.1f} s ({options})")
    domains = {d: (g.images, g.meta) for d, g in generated.items()}
    c_images, c_meta = domains["C"]
    pd.set_option("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4f}".format)

    section("6.1 files with max > 1 (targets C 514±40, B <= 5, A+D 602±120)", stats.files_above_one(domains))
    section(
        "6.2 domain C per-image statistics", stats.c_image_table(c_images, c_meta, pd.read_csv(args.real_c))
    )
    pooled = stats.pooled_table(domains)
    relative = pooled.pivot_table(index=["domain", "part"], columns="stat", values="rel", sort=False)
    section("6.3 pooled pixel statistics (rel = synth/target - 1)", relative)
    section("6.3 failing pooled statistics", pooled[~pooled["ok"]])
    section("6.4 gates (p90 midpoint, best mean threshold)", stats.gate_table(domains))
    section("6.4 C group means (gc < fc < gw < fw)", stats.group_means(c_images, c_meta))
    section("6.5 domain C AUROC", stats.auroc_table(c_images, c_meta))
    b_images, b_meta = domains["B"]
    section(
        "6.5 domain B AUROC (mean < 0.5: faults darker)", stats.auroc_table(b_images, b_meta).loc[["mean"]]
    )
    section("6.5 cold max shares (%)", stats.cold_max_shares(domains))
    soft = stats.soft_table(domains)
    section("6.6 soft targets (not asserted)", soft.set_index(["metric", "domain"]).unstack("domain"))
    section("6.6 C fault/cold row contrast (target 1.32, 1.15-1.45)", stats.c_row_contrast(c_images, c_meta))


if __name__ == "__main__":
    main()
