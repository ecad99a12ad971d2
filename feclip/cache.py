"""Frozen pre-tap tokens, computed once and reused.

The backbone is frozen and no augmentation is used, so the tokens entering the first tap block depend only on
(backbone weights, first tap, input transform, images). Training and evaluation then run only the blocks from
the first tap on. Modes: `off` (full forward every step), `memory` (computed once per run), `disk` (stored
under `cache_dir` keyed by a hash of those inputs, memory-mapped, shared by the jobs of a sweep; a changed
input gives a new key).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import AbstractContextManager
from pathlib import Path

import torch
from tqdm import tqdm

from feclip.data.sets import ImageSet
from feclip.model.feclip import FEClip


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha1 over the module's parameters and buffers (names, shapes, bytes)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(model: FEClip, images: ImageSet, precision: str, weights: str | None = None) -> str:
    """weights: the backbone's `weights_fingerprint` when the caller has it (hashing ViT-L is not free)."""
    parts = [
        weights or weights_fingerprint(model.backbone),
        str(model.taps[0]),
        images.fingerprint(),
        precision,
    ]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


@torch.inference_mode()
def compute_tokens(
    model: FEClip, images: ImageSet, batch_size: int, device: torch.device, autocast: AbstractContextManager
) -> torch.Tensor:
    """Pre-tap tokens (N, T, D) on the CPU, computed in batches on `device`."""
    chunks = []
    for start in tqdm(range(0, len(images), batch_size), desc="frozen tokens", leave=False):
        index = torch.arange(start, min(start + batch_size, len(images)))
        with autocast:
            chunks.append(model.pre_tap_tokens(images.inputs(index, device)).cpu())
    return torch.cat(chunks)


def pre_tap_tokens(
    model: FEClip,
    images: ImageSet,
    mode: str,
    batch_size: int,
    device: torch.device,
    autocast: AbstractContextManager,
    precision: str,
    cache_dir: str | Path,
    weights: str | None = None,
) -> torch.Tensor | None:
    """The set's pre-tap tokens (N, T, D) per `mode`, or None for `off`."""
    if mode == "off":
        return None
    if mode == "memory":
        return compute_tokens(model, images, batch_size, device, autocast)
    path = Path(cache_dir) / f"tokens-{cache_key(model, images, precision, weights)}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(compute_tokens(model, images, batch_size, device, autocast), tmp)
        os.replace(tmp, path)
    return torch.load(path, weights_only=True, mmap=True)
