"""Frozen features, computed once and reused: the part of a method's forward that never trains.

The backbone is frozen and no augmentation is used, so what a method computes before its first learnable
module depends only on (the method's frozen identity, the input transform, the images, the precision): for
FE-CLIP the tokens entering the first tap block. Training and evaluation then run only the rest. Modes
(`train.token_cache`): `off` (full forward every time), `memory` (computed once per run), `disk` (stored
under `cache_dir` keyed by a hash of those inputs, memory-mapped, shared by the jobs of a sweep; a changed
input gives a new key).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from tqdm import tqdm

from feclip.data.sets import ImageSet
from feclip.runtime import Runtime


def weights_fingerprint(module: torch.nn.Module) -> str:
    """sha1 over the module's parameters and buffers (names, shapes, bytes)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_key(frozen_key: str, images: ImageSet, precision: str) -> str:
    """frozen_key: the method's `frozen_key()` (its frozen weights and where the frozen part ends)."""
    parts = [frozen_key, images.fingerprint(), precision]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


@torch.inference_mode()
def compute_frozen(method, images: ImageSet, rt: Runtime) -> torch.Tensor:
    """The method's frozen features (N, ...) on the CPU, computed in batches on `rt.device`."""
    chunks = []
    for start in tqdm(range(0, len(images), rt.batch_size), desc="frozen tokens", leave=False):
        index = torch.arange(start, min(start + rt.batch_size, len(images)))
        with rt.autocast():
            chunks.append(method.frozen(images.inputs(index, rt.device)).cpu())
    return torch.cat(chunks)


def frozen_features(method, images: ImageSet, rt: Runtime) -> torch.Tensor | None:
    """The set's frozen features per `rt.cache`, or None (mode off, or a method that caches nothing)."""
    if rt.cache == "off" or not method.caches_frozen:
        return None
    if rt.cache == "memory":
        return compute_frozen(method, images, rt)
    path = Path(rt.cache_dir) / f"tokens-{cache_key(method.frozen_key(), images, rt.precision)}.pt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(compute_frozen(method, images, rt), tmp)
        os.replace(tmp, path)
    return torch.load(path, weights_only=True, mmap=True)
