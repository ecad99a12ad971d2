"""The study rehearsal of `scripts/gpu_check.sh`: every method a GPU study runs, at realistic size with random
init (or the tiny backbones with --cpu), in fp32 and bf16, then predict with each saved model.

    python scripts/gpu_check.py --device cuda --out /tmp/check       # ViT-L/14-336, DINOv2 at 518, ...
    python scripts/gpu_check.py --device cpu --tiny --out /tmp/check  # the same steps on the tiny backbones

Per check (FE-CLIP train_eval, PatchCore, WinCLIP+, gated CPD-PatchCore): one job per precision on a small
synthetic domain C (time, peak GPU memory, the AUROC difference), predict with each checkpoint at its
calibrated precision (must reproduce the job's scores), and the fp32 model scored at bf16 against its fp32
scores (rank correlation, max relative difference, distinct scores: the precision policy's agreement on an
identical model). One table; exit 1 on any failure or value out of bounds (random-init numbers: they test
the pipeline and the policy, not the methods).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hydra import compose, initialize_config_dir
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from feclip import CONF_DIR  # noqa: E402
from feclip.jobs.run import main  # noqa: E402
from feclip.tracking import JobInfo  # noqa: E402

# name -> (realistic overrides, tiny overrides): what a study of the user runs
CHECKS = {
    "feclip_vitl336": (
        ["backbone=vit_l14_336", "backbone.pretrained=null"],
        ["backbone=tiny"],
    ),
    "patchcore_dinov2_518": (
        [
            "method=patchcore",
            "method.backbone=dinov2_vits14",
            "method.input_size=[518,518]",
            "method.coreset_ratio=0.01",
        ],
        ["method=patchcore", "method.backbone=tiny"],
    ),
    "winclip_b16plus240": (
        ["method=winclip", "backbone=vit_b16_plus_240", "backbone.pretrained=null", "fewshot=k4"],
        ["method=winclip", "backbone=tiny", "fewshot=k4"],
    ),
    "cpd_patchcore_gated": (
        [
            "method=patchcore",
            "method.backbone=dinov2_vits14",
            "method.input_size=[518,518]",
            "fewshot=cpd",
            "gating=p90",
        ],
        ["method=patchcore", "method.backbone=tiny", "fewshot=cpd", "gating=p90"],
    ),
}
# the fp32 model scored at bf16 vs at fp32 (tests/test_precision.py's bounds: random init scores images alike)
MIN_RANK_CORRELATION = 0.9
MIN_DISTINCT_RATIO = 0.9  # distinct bf16 scores / distinct fp32 scores (quantised scores fail here)
MAX_RELATIVE = 0.05  # one image whose nearest bank patch changes moves by ~0.1 SD of the scores
MAX_SD_FRACTION = 0.5  # max |difference| / SD of the fp32 scores
# predict vs the job's own scores.csv, same model and precision (bf16 GEMMs round by batch composition)
PREDICT_RTOL = {"fp32": 1e-5, "bf16": 1e-2}


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def _common(args, out: Path) -> list[str]:
    n_train, n_test, refs = (40, 20, 4) if args.tiny else (200, 100, 16)
    return [
        "domain=C",
        f"device={args.device}",
        f"data.root={out / 'hdmap'}",
        f"data.synthetic.n_train={n_train}",
        f"data.synthetic.n_test={n_test}",
        f"eval.split.refs_per_condition={refs}",
        "train.epochs=1",
        "aux.max_normals=100",
        f"cache_dir={out / 'cache'}",
        "tracking.enabled=false",
        "eval.figures=false",
    ]


def _job(overrides: list[str], folder: Path, name: str, device: str) -> dict:
    """Run one job in-process; its time (s) and peak GPU memory (GB)."""
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    main(_cfg(overrides), folder, JobInfo(name, name))
    peak = torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else float("nan")
    return {"s": time.perf_counter() - start, "peak_gb": peak}


def agreement(exact: np.ndarray, reduced: np.ndarray) -> dict:
    """bf16 vs fp32 scores of the same images: rank correlation, max relative difference, max difference in
    SDs of the fp32 scores, distinct ratio."""
    difference = np.abs(reduced - exact)
    return {
        "spearman": float(spearmanr(exact, reduced).statistic),
        "max_rel": float((difference / np.maximum(np.abs(exact), 1e-6)).max()),
        "max_sd": float(difference.max() / exact.std()),
        "distinct": len(np.unique(reduced)) / len(np.unique(exact)),
    }


def _predict(job: Path, out: Path, device: str, *overrides: str) -> pd.Series:
    """Predict the domain's test images (good and fault) with the job's checkpoint: scores by path."""
    args = [
        "mode=predict",
        f"model.checkpoint={job / 'checkpoint'}",
        f"predict.input={out.parents[1] / 'hdmap' / 'domain_C' / 'test' / '*' / '*.tiff'}",
        f"device={device}",
        "tracking.enabled=false",
        *overrides,
    ]
    main(_cfg(args), out, JobInfo("predict", "predict"))
    return pd.read_csv(out / "predictions.csv").set_index("path")["score"]


def _scores(job: Path) -> pd.Series:
    return pd.read_csv(job / "scores.csv").set_index("path")["score"]


def _max_relative(a: pd.Series, b: pd.Series) -> float:
    common = a.index.intersection(b.index)
    return float((np.abs(a[common] - b[common]) / np.maximum(np.abs(a[common]), 1e-6)).max())


def check(name: str, overrides: list[str], args, out: Path) -> dict:
    """One row of the table (`error` set on a failure): a job per precision (as a study runs them), the
    fp32 model scored at bf16 by predict (the agreement on an identical model), and predict with each
    checkpoint at its calibrated precision (must reproduce the job's own scores)."""
    row: dict = {"check": name}
    jobs = {precision: out / name / precision for precision in ("fp32", "bf16")}
    try:
        for precision, folder in jobs.items():
            job_overrides = [*_common(args, out), *overrides, f"precision={precision}"]
            timing = _job(job_overrides, folder, name, args.device)
            row |= {f"{precision}_s": timing["s"], f"{precision}_peak_gb": timing["peak_gb"]}
            own = _predict(folder, out / name / f"predict_{precision}", args.device)
            row[f"predict_{precision}_rel"] = _max_relative(_scores(folder), own)
        exact = _scores(jobs["fp32"])
        allow = ("precision=bf16", "predict.allow_precision_change=true")
        reduced = _predict(jobs["fp32"], out / name / "fp32_model_at_bf16", args.device, *allow)
        row |= agreement(exact.to_numpy(), reduced.loc[exact.index].to_numpy())
        row["auroc_fp32_vs_bf16_job"] = _auroc(jobs["fp32"]) - _auroc(jobs["bf16"])
    except Exception as error:  # one check's failure is reported in the table, the others still run
        traceback.print_exc()
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:120]
    return row


def _auroc(job: Path) -> float:
    return float(json.loads((job / "metrics.json").read_text())["metrics"]["auroc"])


def verdict(row: dict) -> str:
    """'ok' or what is out of bounds."""
    if "error" in row:
        return row["error"]
    bounds = [
        (row["spearman"] < MIN_RANK_CORRELATION, f"spearman {row['spearman']:.3f} < {MIN_RANK_CORRELATION}"),
        (row["distinct"] < MIN_DISTINCT_RATIO, f"distinct {row['distinct']:.2f} < {MIN_DISTINCT_RATIO}"),
        (row["max_rel"] > MAX_RELATIVE, f"max relative difference {row['max_rel']:.2g} > {MAX_RELATIVE}"),
        *(
            (
                row[f"predict_{p}_rel"] > PREDICT_RTOL[p],
                f"predict {p} differs by {row[f'predict_{p}_rel']:.2g}",
            )
            for p in PREDICT_RTOL
        ),
    ]
    return "; ".join(text for out_of_bounds, text in bounds if out_of_bounds) or "ok"


def main_cli(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--tiny", action="store_true", help="the tiny random-init backbones (CPU dry run)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the jobs (data, checkpoints)")
    parser.add_argument("--only", nargs="*", default=None, help=f"a subset of: {', '.join(CHECKS)}")
    args = parser.parse_args(argv)
    unknown = set(args.only or []) - set(CHECKS)
    if unknown:
        parser.error(f"--only {sorted(unknown)}: expected names from {', '.join(CHECKS)}")
    rows = []
    for name, (real, tiny) in CHECKS.items():
        if args.only is None or name in args.only:
            rows.append(check(name, tiny if args.tiny else real, args, args.out))
    table = pd.DataFrame(rows)
    table["verdict"] = [verdict(row) for row in rows]
    size = "tiny backbones" if args.tiny else "realistic size"
    print(f"## study check ({size}, random init: agreement and plumbing, not detection numbers)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    return 0 if (table["verdict"] == "ok").all() else 1


if __name__ == "__main__":
    sys.exit(main_cli())
