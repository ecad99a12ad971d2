"""Auxiliary training sources: what a method's adapters learn from (`aux.source`, the `aux` config group).

Each source builds a labelled `ImageSet` (or None: nothing to train on) from the job's context:
- `synthetic_faults`: the target domain's train normals (the fit slice) plus band faults injected into
  copies of them (`feclip.data.faults`), balanced, with pixel masks;
- `hdmap_other_domains`: the test images of the other three HDMAP domains, image labels only (no masks);
- `mvtec` / `visa`: the test split of a paper benchmark with masks (the paper's zero-shot protocol; the
  images keep their own RGB input transform, so an HDMAP job can be trained on MVTec AD);
- `none`: no training (a loaded checkpoint, or the plain-CLIP baseline).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from feclip.data.benchmarks import load_benchmark
from feclip.data.faults import BandFaultConfig, inject_band_faults
from feclip.data.hdmap import DOMAINS, HDMAPData, load_domain
from feclip.data.sets import ImageSet, labelled_set
from feclip.data.transforms import RGBInput
from feclip.errors import FeclipError
from feclip.registry import Registry


@dataclass(frozen=True)
class SourceContext:
    """What a source may draw on: the HDMAP root and its cold/warm split, the fit normals, the HDMAP input
    transform, and the model input (size, mean, std) for RGB benchmark images."""

    root: Path | None
    cold_warm_split: int | None
    fit: HDMAPData | None
    to_input: nn.Module | None
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Source:
    """A training source: `build(cfg, ctx) -> ImageSet | None`; `needs_hdmap`: it reads the HDMAP domain
    (so a paper-benchmark job, which has none, cannot use it); `tags(cfg)`: run tags that say what the run
    was trained on (e.g. in-distribution synthetic faults); `check(cfg, n_fit)`: a one-line error, before any
expensive step, when the job's `n_fit` normals would give the source nothing to train on."""

    build: Callable[[DictConfig, SourceContext], ImageSet | None]
    needs_hdmap: bool
    tags: Callable[[DictConfig], dict[str, str]] = lambda cfg: {}
    check: Callable[[DictConfig, int], object] = lambda cfg, n_fit: None  # (cfg, fit normals): one-line error


AUX_SOURCES: Registry[Source] = Registry("auxiliary training source", key="aux.source")


class SourceError(FeclipError):
    """A training source would have nothing to train on; the message names the config keys."""


def fault_count(cfg: DictConfig, n_fit: int) -> int:
    """Faulty copies `synthetic_faults` makes from `n_fit` normals (capped at aux.max_normals): at least one,
    else a one-line SourceError."""
    n_normals = min(n_fit, cfg.aux.max_normals or n_fit)
    count = round(cfg.aux.faults_per_normal * n_normals)
    if count < 1:
        raise SourceError(
            f"aux.faults_per_normal={cfg.aux.faults_per_normal} gives round({cfg.aux.faults_per_normal} x "
            f"{n_normals} normals) = 0 faulty training images; expected at least 1 "
            f"(aux.faults_per_normal >= {0.5 / max(n_normals, 1):.3g})"
        )
    return count


def synthetic_faults(cfg: DictConfig, ctx: SourceContext) -> ImageSet:
    """Clean fit normals (capped at aux.max_normals) + faults_per_normal x as many faulty copies."""
    normals = ctx.fit.images[: cfg.aux.max_normals] if cfg.aux.max_normals else ctx.fit.images
    generator = torch.Generator().manual_seed(cfg.seed)
    picks = torch.randint(len(normals), (fault_count(cfg, len(ctx.fit)),), generator=generator)
    fault_cfg = BandFaultConfig(**OmegaConf.to_container(cfg.aux.fault))
    faulty, fault_masks = inject_band_faults(normals[picks], fault_cfg, generator)
    masks = torch.cat([torch.zeros(normals.shape, dtype=torch.uint8), fault_masks])
    labels = [0] * len(normals) + [1] * len(picks)
    return labelled_set(torch.cat([normals, faulty]), labels, ctx.to_input, masks)


def synthetic_fault_tags(cfg: DictConfig) -> dict[str, str]:
    """The fault family, and a loud label when the training faults are the test faults' own process."""
    family = cfg.aux.fault.family
    tags = {"feclip.training_faults": family}
    if family == "test_like":
        tags["feclip.in_distribution"] = "true: trained on the synthetic test faults' own process (optimistic)"
    return tags


def hdmap_other_domains(cfg: DictConfig, ctx: SourceContext) -> ImageSet:
    """The test images of the other domains (capped at aux.max_per_domain each, seeded), labels only."""
    parts = [
        _capped(
            load_domain(ctx.root, d, splits=("test",), cold_warm_split=ctx.cold_warm_split, allow_integer=cfg.data.allow_integer),
            cfg.aux.max_per_domain,
            cfg.seed,
        )
        for d in DOMAINS
        if d != cfg.domain.name
    ]
    labels = np.concatenate([p.meta["label"].to_numpy() for p in parts])
    return labelled_set(torch.cat([p.images for p in parts]), labels, ctx.to_input)


def _capped(data: HDMAPData, cap: int | None, seed: int) -> HDMAPData:
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:cap])) if cap else data


def benchmark_test_split(cfg: DictConfig, ctx: SourceContext) -> ImageSet:
    """All test images of the benchmark `aux.name` with their masks (all-zero for good images)."""
    data = load_benchmark(cfg.aux.name, Path(cfg.aux.root), ctx.size, cfg.aux.geometry)
    return benchmark_set(data, RGBInput(ctx.mean, ctx.std))


def benchmark_set(data, to_input: nn.Module) -> ImageSet:
    """A loaded benchmark (`BenchmarkData`) as an ImageSet; every sample has a mask."""
    labels = torch.tensor(data.meta["label"].to_numpy(), dtype=torch.int64)
    return ImageSet(data.images, labels, data.masks, torch.ones(len(labels), dtype=torch.bool), to_input)


def no_training(cfg: DictConfig, ctx: SourceContext) -> None:
    return None


AUX_SOURCES.register(
    "synthetic_faults", Source(synthetic_faults, needs_hdmap=True, tags=synthetic_fault_tags, check=fault_count)
)
AUX_SOURCES.register("hdmap_other_domains", Source(hdmap_other_domains, needs_hdmap=True))
AUX_SOURCES.register("none", Source(no_training, needs_hdmap=False))
AUX_SOURCES.register("mvtec", Source(benchmark_test_split, needs_hdmap=False))
AUX_SOURCES.register("visa", Source(benchmark_test_split, needs_hdmap=False))
