"""Minimum detectable differences (80 % power, two-sided alpha 0.05) for HDMAP's sizes under the default
study split (feclip/conf/eval/hdmap.yaml: refs 100 per condition, dev 20 %), per domain: the test part's
images, all and cold only, for AUROC (Hanley-McNeil, unpaired and paired at correlation 0.8) and accuracy
(paired McNemar at a discordance rate, and unpaired).

    python experiments/008_decidable_studies/mdd.py
"""

import numpy as np
import pandas as pd
from omegaconf import OmegaConf

from feclip import CONF_DIR
from feclip.evaluation import stats
from feclip.evaluation.split import split_test

CONF = OmegaConf.load(CONF_DIR / "eval" / "hdmap.yaml").split


def hdmap_test_meta() -> pd.DataFrame:
    """HDMAP's test layout: 1000 good + 1000 fault, file index < 500 cold."""
    rows = [
        {"path": f"{label}/{i:06d}.tiff", "domain": "C", "label": int(label == "fault"), "file_index": i}
        for label in ("good", "fault")
        for i in range(1000)
    ]
    meta = pd.DataFrame(rows)
    meta["condition"] = np.where(meta["file_index"] < 500, "cold", "warm")
    return meta


def sizes() -> dict[str, tuple[int, int]]:
    meta = hdmap_test_meta()
    part = split_test(meta, CONF).part
    out = {}
    for name in ("test", "dev"):
        for subset, rows in (
            ("all", np.ones(len(meta), bool)),
            ("cold", meta["condition"].to_numpy() == "cold"),
        ):
            chosen = meta[(part == name) & rows]
            out[f"{name} {subset}"] = (int(chosen["label"].sum()), int((chosen["label"] == 0).sum()))
    return out


def main() -> None:
    print(
        "| part | faults | goods | AUROC 0.85 unpaired / paired r=0.8 | AUROC 0.95 unpaired / paired | "
        "accuracy paired, discordance 5 % / 10 % / 20 % | accuracy 80 % / 90 % unpaired |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (n_pos, n_neg) in sizes().items():
        n = n_pos + n_neg
        auroc = [
            " / ".join(f"{100 * stats.mdd_auroc(a, n_pos, n_neg, correlation=r):.2f}" for r in (0.0, 0.8))
            for a in (0.85, 0.95)
        ]
        paired = " / ".join(f"{100 * stats.mdd_accuracy_paired(d, n):.2f}" for d in (0.05, 0.10, 0.20))
        unpaired = " / ".join(f"{100 * stats.mdd_accuracy_unpaired(p, n, n):.2f}" for p in (0.8, 0.9))
        print(f"| {name} | {n_pos} | {n_neg} | {auroc[0]} | {auroc[1]} | {paired} | {unpaired} |")


if __name__ == "__main__":
    main()
