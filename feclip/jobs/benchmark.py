"""The paper's zero-shot benchmark protocol (docs/method.md §13).

Train the adapters on the test split of one dataset (all categories, image labels and masks), then evaluate on
every category of other datasets: image AUROC / AP, pixel AUROC and PRO per category and their macro means.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig

from feclip.cache import frozen_features
from feclip.data.benchmarks import BENCHMARKS, BenchmarkData, list_benchmark, load_benchmark
from feclip.data.sources import AUX_SOURCES, SourceContext, benchmark_set
from feclip.data.transforms import RGBInput
from feclip.errors import FeclipError
from feclip.evaluation.inference import predict
from feclip.evaluation.metrics import benchmark_metrics
from feclip.files import atomic_folder
from feclip.jobs.common import JobRecord, epoch_logger
from feclip.methods.base import Method
from feclip.methods.registry import build_method
from feclip.runtime import Runtime, runtime


class BenchmarkJobError(FeclipError):
    """The benchmark job was given a training source it cannot use."""


def check_datasets(cfg: DictConfig) -> None:
    """List the training source and every target dataset first: a bad path fails in seconds, not after
    training."""
    source = AUX_SOURCES.get_entry(cfg.aux.source)
    if source.needs_hdmap:
        raise BenchmarkJobError(
            f"aux.source={cfg.aux.source!r} reads an HDMAP domain, which eval.protocol=benchmark lacks; "
            f"expected one of: {', '.join(n for n, s in AUX_SOURCES.items() if not s.needs_hdmap)}"
        )
    specs = [cfg.aux] if cfg.aux.source in BENCHMARKS else []
    for spec in [*specs, *cfg.eval.datasets]:
        list_benchmark(spec.name, Path(spec.root), spec.geometry)


def evaluate_dataset(method: Method, spec: DictConfig, rt: Runtime, to_input) -> dict[str, float]:
    """Macro and per-category metrics of one target dataset, category by category (bounded memory)."""
    size = method.input_size
    catalogue = load_benchmark(spec.name, Path(spec.root), size, spec.geometry)
    results = {}
    for category in sorted(catalogue.meta["category"].unique()):
        rows = np.flatnonzero(catalogue.meta["category"].to_numpy() == category)
        data = benchmark_set(_subset(catalogue, rows), to_input)
        pred = predict(method, data, rt, map_size=size, frozen=frozen_features(method, data, rt))
        results[category] = (pred.scores, data.labels.numpy(), pred.maps.float().numpy(), data.masks.numpy())
    names = list(results)
    metrics = benchmark_metrics(
        *(np.concatenate([results[c][i] for c in names]) for i in range(4)),
        np.concatenate([[c] * len(results[c][0]) for c in names]),
    )
    return {f"{spec.name}/{key}": value for key, value in metrics.items()}


def _subset(data: BenchmarkData, rows: np.ndarray) -> BenchmarkData:
    index = torch.from_numpy(rows)
    return BenchmarkData(data.images[index], data.masks[index], data.meta.iloc[rows].reset_index(drop=True))


def benchmark_job(cfg: DictConfig, output_dir: Path, record: JobRecord) -> dict[str, float]:
    """Train on the test split of aux=mvtec|visa, then evaluate every dataset of eval.datasets."""
    check_datasets(cfg)
    rt = runtime(cfg)
    method = build_method(cfg).to(rt.device)
    record.set_tags(method.tags())
    to_input = RGBInput(*method.input_stats())
    ctx = SourceContext(None, None, None, None, method.input_size, *method.input_stats())
    source = AUX_SOURCES.get_entry(cfg.aux.source).build(cfg, ctx)

    def frozen(images):
        return frozen_features(method, images, rt)

    method.fit(aux=source, rt=rt, frozen=frozen, log_epoch=epoch_logger(record))
    metrics = {}
    for spec in cfg.eval.datasets:
        metrics.update(evaluate_dataset(method, spec, rt, to_input))
    metrics["image_auroc"] = float(
        np.mean([metrics[f"{spec.name}/image_auroc"] for spec in cfg.eval.datasets])
    )
    record.log_metrics(metrics)
    with atomic_folder(output_dir / "checkpoint") as checkpoint:
        method.save(checkpoint)
    table = paper_table(metrics, cfg.eval.datasets).assign(random_init=method.random_init)
    table.to_csv(output_dir / "paper_comparison.csv", index=False)
    return metrics


def paper_table(metrics: dict[str, float], datasets) -> pd.DataFrame:
    """Measured macro metrics (x100) beside the paper's, one row per dataset and metric the paper reports."""
    rows = []
    for spec in datasets:
        for name, paper in (BENCHMARKS[spec.name].paper or {}).items():
            rows.append(
                {
                    "dataset": spec.name,
                    "metric": name,
                    "measured": 100 * metrics[f"{spec.name}/{name}"],
                    "paper": paper,
                }
            )
    return pd.DataFrame(rows)
