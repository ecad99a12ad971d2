"""The paper's zero-shot benchmark protocol (feclip_method.md sections 2-3).

Train the adapters on the test split of one dataset (all categories, image labels and masks), then evaluate on
every category of other datasets: image AUROC / AP, pixel AUROC and PRO per category and their macro means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from feclip.data.benchmarks import BenchmarkData, list_benchmark, load_benchmark
from feclip.data.sets import ImageSet
from feclip.data.transforms import RGBInput
from feclip.evaluate import predict
from feclip.metrics import benchmark_metrics
from feclip.model.checkpoint import save_checkpoint
from feclip.model.feclip import FEClip

# Paper numbers (feclip_method.md section 3), in percent: image AUROC / AP, pixel AUROC / PRO.
PAPER = {
    "mvtec": {"image_auroc": 91.9, "image_ap": 96.5, "pixel_auroc": 92.6, "pro": 88.3},
    "visa": {"image_auroc": 84.6, "image_ap": 86.6, "pixel_auroc": 95.9, "pro": 92.8},
    "btad": {"image_auroc": 90.3, "image_ap": 90.0, "pixel_auroc": 95.6, "pro": 80.4},
}


def image_set(data: BenchmarkData, to_input: RGBInput) -> ImageSet:
    """Benchmark images with their masks; every sample has a mask (all-zero for good images)."""
    labels = torch.tensor(data.meta["label"].to_numpy(), dtype=torch.int64)
    return ImageSet(data.images, labels, data.masks, torch.ones(len(labels), dtype=torch.bool), to_input)


def load(spec: DictConfig, size: tuple[int, int], categories=None) -> BenchmarkData:
    return load_benchmark(spec.name, Path(spec.root), size, spec.geometry, categories)


def check_datasets(cfg: DictConfig) -> None:
    """List the training source and every target dataset first: a bad path fails in seconds, not after
    training."""
    specs = [cfg.aux] if cfg.aux.source in PAPER else []
    for spec in [*specs, *cfg.eval.datasets]:
        list_benchmark(spec.name, Path(spec.root), spec.geometry)


def evaluate_dataset(
    model: FEClip, spec: DictConfig, size, to_input, batch_size, device, autocast, tokens_for
):
    """Macro and per-category metrics of one target dataset, category by category (bounded memory)."""
    catalogue = load(spec, size)
    results = {}
    for category in sorted(catalogue.meta["category"].unique()):
        rows = np.flatnonzero(catalogue.meta["category"].to_numpy() == category)
        data = image_set(_subset(catalogue, rows), to_input)
        pred = predict(model, data, batch_size, device, autocast, size, tokens_for(data))
        results[category] = (pred.scores, data.labels.numpy(), pred.maps.float().numpy(), data.masks.numpy())
    names = list(results)
    metrics = benchmark_metrics(
        np.concatenate([results[c][0] for c in names]),
        np.concatenate([results[c][1] for c in names]),
        np.concatenate([results[c][2] for c in names]),
        np.concatenate([results[c][3] for c in names]),
        np.concatenate([[c] * len(results[c][0]) for c in names]),
    )
    return {f"{spec.name}/{key}": value for key, value in metrics.items()}


def _subset(data: BenchmarkData, rows: np.ndarray) -> BenchmarkData:
    index = torch.from_numpy(rows)
    return BenchmarkData(data.images[index], data.masks[index], data.meta.iloc[rows].reset_index(drop=True))


def benchmark_job(cfg: DictConfig, output_dir: Path, tracker) -> dict[str, float]:
    """Train on the test split of aux=mvtec|visa, then evaluate every dataset of eval.datasets."""
    from feclip.runner import build_model, fit_adapters, runtime

    check_datasets(cfg)
    rt = runtime(cfg)
    model = build_model(cfg, rt.device)
    size = tuple(cfg.backbone.input_size)
    to_input = RGBInput(model.backbone.mean, model.backbone.std)
    source = image_set(load(cfg.aux, size), to_input) if cfg.aux.source in PAPER else None
    tokens_for = rt.tokens(cfg, model)
    fit_adapters(cfg, rt, model, source, tracker, tokens_for)
    metrics = {}
    for spec in cfg.eval.datasets:
        metrics.update(
            evaluate_dataset(
                model, spec, size, to_input, cfg.eval.batch_size, rt.device, rt.autocast, tokens_for
            )
        )
    headline = [metrics[f"{spec.name}/image_auroc"] for spec in cfg.eval.datasets]
    metrics["image_auroc"] = float(np.mean(headline))
    save_checkpoint(output_dir / "checkpoint", model, extra={"trained_on": cfg.aux.source})
    paper_table(metrics, cfg.eval.datasets).to_csv(output_dir / "paper_comparison.csv", index=False)
    return metrics


def paper_table(metrics: dict[str, float], datasets) -> pd.DataFrame:
    """Measured macro metrics (x100) beside the paper's, one row per dataset and metric."""
    rows = []
    for spec in datasets:
        for name, paper in PAPER[spec.name].items():
            rows.append(
                {
                    "dataset": spec.name,
                    "metric": name,
                    "measured": 100 * metrics[f"{spec.name}/{name}"],
                    "paper": paper,
                }
            )
    return pd.DataFrame(rows)
