"""Per method, the fp32 and bf16 runs of a sweep folder (experiments/010_precision_policy): AUROC, auroc_cold
and the agreement of their per-image test scores (rank correlation, max relative difference, distinct scores).

    python experiments/010_precision_policy/agreement.py <sweep folder>
"""

import json
import sys
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr

root = Path(sys.argv[1])
runs = {}
for folder in sorted(p for p in root.iterdir() if (p / "run.json").is_file()):
    tags = json.loads((folder / "run.json").read_text())["tags"]
    overrides = json.loads((folder / "run.json").read_text()).get("overrides", [])
    precision = next(o.split("=")[1] for o in overrides if o.startswith("precision="))
    runs[(tags["method"], precision)] = folder
rows = []
for method in ("feclip", "patchcore", "winclip"):
    a, b = runs[(method, "fp32")], runs[(method, "bf16")]
    ma = json.loads((a / "metrics.json").read_text())["metrics"]
    mb = json.loads((b / "metrics.json").read_text())["metrics"]
    sa = pd.read_csv(a / "scores.csv").set_index("path")["score"]
    sb = pd.read_csv(b / "scores.csv").set_index("path")["score"].loc[sa.index]
    d = (sb - sa).abs()
    rows.append(
        {
            "method": method,
            "auroc fp32": 100 * ma["auroc"],
            "auroc bf16": 100 * mb["auroc"],
            "auroc_cold fp32": 100 * ma["auroc_cold"],
            "auroc_cold bf16": 100 * mb["auroc_cold"],
            "spearman": spearmanr(sa, sb).statistic,
            "max rel diff": float((d / sa.abs().clip(lower=1e-6)).max()),
            "distinct fp32": sa.nunique(),
            "distinct bf16": sb.nunique(),
        }
    )
t = pd.DataFrame(rows)
print("| " + " | ".join(t.columns) + " |")
print("|" + "---|" * len(t.columns))
for r in t.itertuples(index=False):
    print("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
