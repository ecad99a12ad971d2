"""Where and how a job computes: device, precision (what `feclip.precision`'s policy grants the
reducible operations: bf16 on CUDA by default), inference batch size and the frozen-feature cache, passed
whole (`rt`) to every function that runs a model."""

from __future__ import annotations

import contextlib
import functools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig

from feclip import precision as policy_
from feclip.errors import FeclipError
from feclip.registry import choices

DEVICES = choices("device", "device", ("auto", "cpu", "cuda"))
CACHE_MODES = choices("frozen-feature cache mode", "train.token_cache", ("disk", "memory", "off"))


class DeviceError(FeclipError):
    """The device or precision asked for is not available."""


@dataclass(frozen=True)
class Runtime:
    """device; precision 'fp32' | 'bf16' | 'tf32' (resolved: what the policy grants the frozen backbone;
    adapters, heads, distances, maps and losses stay fp32, `feclip.precision`); batch_size: images per
    inference batch; cache: frozen-feature cache mode (`feclip.cache`) and its folder."""

    device: torch.device
    precision: str = "fp32"
    batch_size: int = 64
    cache: str = "off"
    cache_dir: Path = Path("data/cache")
    cache_dtype: str = "auto"  # fp32 | bf16 | auto (fp32, as computed; `feclip.cache.storage_dtype`)
    cache_max_gb: float | str | None = None  # cap of cache_dir in GB, 'auto' (from free disk) or None; LRU

    def policy(self) -> contextlib.AbstractContextManager:
        """The precision policy of this run around a method's work (`feclip.precision.policy`): only the
        operations it lists as reducible compute in reduced precision inside."""
        return policy_.policy(self.precision, self.device.type)


def runtime(cfg: DictConfig) -> Runtime:
    """Runtime from `device` / `precision` (auto: bf16 on CUDA, fp32 on CPU; tf32 is fp32 off CUDA),
    `eval.batch_size`, `train.token_cache` and `cache_dir`. TF32 is off outside the policy's scopes."""
    device, precision = compute_identity(cfg)
    policy_.configure_tf32(False)
    return Runtime(
        torch.device(device),
        precision,
        batch_size=cfg.eval.batch_size,
        cache=cfg.train.token_cache,
        cache_dir=Path(cfg.cache_dir),
        cache_dtype=cfg.train.cache_dtype,
        cache_max_gb=cfg.train.cache_max_gb,
    )


def compute_identity(cfg: DictConfig) -> tuple[str, str]:
    """(device type 'cpu' | 'cuda', resolved precision) of `device` / `precision`: a run's identity."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise DeviceError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
    device = "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu"
    return device, policy_.resolve(cfg.precision, device)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (data generation has its own seed)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def building_constants():
    """Tensors made inside are ordinary ones (not inference tensors) without a graph: kept across calls, those
    first made during an inference call still serve a later step with autograd (an inference tensor cannot
    be saved for backward)."""
    with torch.inference_mode(False), torch.no_grad():
        yield


def cached_constants(maxsize: int = 64):
    """Decorator: memoise a function that builds constant tensors from hashable arguments (sizes, a device),
    built under `building_constants`."""

    def wrap(build):
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(build)
        def cached(*args):
            with building_constants():
                return build(*args)

        return cached

    return wrap
