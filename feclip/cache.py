"""Frozen features, computed once and reused: the part of a method's forward that never trains.

The backbone is frozen and no augmentation is used, so what a method computes before its first learnable
module depends only on the method's frozen identity (model name and config, activation, weights, where the
frozen part ends, the version of the code that computes it), the input transform, the images, the precision
and the device kind. For FE-CLIP that is the tokens entering the first tap block. Training and evaluation then
run only the rest. Modes (`train.token_cache`): `off` (full forward every time), `memory` (computed once per
run), `disk` (stored under `cache_dir`, shared by the jobs of a sweep; any changed input gives a new key).

A disk entry is `<key>.npy` (the features, written chunk by chunk into a memory map under a temporary name,
never concatenated in RAM, and memory-mapped on read) plus `<key>.json` (what it holds and the sha256 of the
`.npy`, written last and atomically: an entry without it is incomplete). Every read checks the sha256, so an
entry changed after it was written (other bytes of the same size included) is never used. Features are
stored in `train.cache_dtype` (`auto`: float32, as computed; bf16 halves the disk and RAM, only where the
features feed the backbone again: `storage_dtype`). An unreadable, truncated or changed entry is reported
in one line and recomputed. `train.cache_max_gb` caps the folder (`auto`: its size plus half the free
disk): the least recently used entries are removed
first. List or clear the cache with

    feclip cache --list [--dir data/cache]                        (or python -m feclip.cache)
    feclip cache --clear [--older-than DAYS] [--dir data/cache]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from feclip.cli import guard
from feclip.data.sets import ImageSet
from feclip.errors import FeclipError, note
from feclip.files import write_text
from feclip.precision import OPERATIONS
from feclip.progress import progress
from feclip.registry import choices
from feclip.runtime import Runtime

CACHE_DTYPES = choices("cache storage dtype", "train.cache_dtype", ("auto", "fp32", "bf16"))
STORAGE = {"fp32": (torch.float32, np.float32), "bf16": (torch.bfloat16, np.int16)}  # bf16 bits as int16
AUTO_CAP_FRACTION = 0.5  # cache_max_gb=auto: the folder may take half the disk space free when a job starts


class CacheError(FeclipError):
    """A cache folder or setting is unusable."""


@dataclass(frozen=True)
class Frozen:
    """Frozen features of N images and the model input size (h, w) they were computed from."""

    features: torch.Tensor  # (N, ...)
    input_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index) -> Frozen:
        return Frozen(self.features[index], self.input_size)

    def to(self, device: torch.device) -> Frozen:
        return Frozen(self.features.to(device), self.input_size)


def storage_dtype(method, dtype: str = "auto") -> str:
    """'fp32' | 'bf16': how `method`'s frozen features are stored. `auto` = fp32, what they are computed in
    (the residual stream stays float32 under bf16 autocast), so cached and uncached scores agree; bf16 (half
    the disk) only for features that feed a reducible operation (`Method.frozen_feeds`, feclip/precision.py):
    PatchCore's feed distances, which the policy keeps in float32."""
    CACHE_DTYPES.get_entry(dtype)
    if dtype == "bf16" and not OPERATIONS.get_entry(method.frozen_feeds).reducible:
        raise CacheError(
            f"train.cache_dtype=bf16: {method.name}'s frozen features feed {method.frozen_feeds}, which the "
            "precision policy keeps in float32; expected train.cache_dtype=auto or fp32"
        )
    return "bf16" if dtype == "bf16" else "fp32"


def cache_key(frozen_key: str, images: ImageSet, *, precision: str, device: str, dtype: str) -> str:
    """frozen_key: the method's `frozen_key()`; the rest: what else changes the stored numbers."""
    parts = [frozen_key, images.fingerprint(), precision, device, dtype]
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:20]


def _batches(images: ImageSet, rt: Runtime):
    for start in progress(range(0, len(images), rt.batch_size), "frozen features", unit="batch"):
        yield torch.arange(start, min(start + rt.batch_size, len(images)))


@torch.inference_mode()
def compute_frozen(method, images: ImageSet, rt: Runtime) -> Frozen:
    """The method's frozen features of every image, on the CPU (in memory)."""
    chunks = []
    for index in _batches(images, rt):
        with rt.policy():
            chunks.append(method.frozen(images.inputs(index, rt.device)).cpu())
    return Frozen(torch.cat(chunks), _input_size(images, rt))


def _input_size(images: ImageSet, rt: Runtime) -> tuple[int, int]:
    return tuple(int(v) for v in images.inputs(torch.arange(1), rt.device).shape[-2:])


@torch.inference_mode()
def _write(method, images: ImageSet, rt: Runtime, path: Path, dtype: str) -> None:
    """Compute chunk by chunk into a memory-mapped `.npy` at `path` (written under a temporary name)."""
    torch_dtype, numpy_dtype = STORAGE[dtype]
    tmp, memmap = path.with_suffix(f".{os.getpid()}.tmp.npy"), None
    try:
        for index in _batches(images, rt):
            with rt.policy():
                chunk = method.frozen(images.inputs(index, rt.device)).to(torch_dtype).cpu()
            if memmap is None:
                shape = (len(images), *chunk.shape[1:])
                memmap = np.lib.format.open_memmap(tmp, mode="w+", dtype=numpy_dtype, shape=shape)
            memmap[index[0] : index[-1] + 1] = (
                chunk.view(torch.int16).numpy() if dtype == "bf16" else chunk.numpy()
            )
        memmap.flush()
        del memmap
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def _read(path: Path, meta: dict) -> Frozen:
    """The entry's features, after checking its sha256 against the one written with it (ValueError)."""
    if "sha256" not in meta:
        raise ValueError("no sha256 (written by an older feclip)")
    if sha256(path) != meta["sha256"]:
        raise ValueError("its content does not match the sha256 written with it (changed on disk)")
    array = np.load(path, mmap_mode="c")  # copy-on-write map: no RAM until rows are used
    if list(array.shape) != meta["shape"]:
        raise ValueError(f"shape {list(array.shape)}, expected {meta['shape']}")
    features = torch.from_numpy(array)
    if meta["dtype"] == "bf16":
        features = features.view(torch.bfloat16)
    return Frozen(features, tuple(meta["input_size"]))


def frozen_features(method, images: ImageSet, rt: Runtime) -> Frozen | None:
    """The set's frozen features per `rt.cache` (stored as `rt.cache_dtype`, folder capped at
    `rt.cache_max_gb`), or None (off, or a method that caches nothing)."""
    if rt.cache == "off" or not method.caches_frozen:
        return None
    if rt.cache == "memory":
        return compute_frozen(method, images, rt)
    stored = storage_dtype(method, rt.cache_dtype)
    key = cache_key(method.frozen_key(), images, precision=rt.precision, device=rt.device.type, dtype=stored)
    folder = Path(rt.cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
            frozen = _read(path, meta)
            os.utime(meta_path)  # last use, for the size cap
            return frozen
        except (OSError, ValueError, KeyError) as error:
            note(f"cache entry {path} is unreadable ({error}); recomputing it")
            meta_path.unlink(missing_ok=True)
    _write(method, images, rt, path, stored)
    meta = {
        "shape": list(np.load(path, mmap_mode="r").shape),
        "dtype": stored,
        "input_size": list(_input_size(images, rt)),
        "method": method.name,
        "images": len(images),
        "created": time.time(),
        "sha256": sha256(path),
    }
    write_text(meta_path, json.dumps(meta, indent=2))
    cap_gb = resolve_cap(rt.cache_max_gb, folder)
    if cap_gb is not None:
        evict(folder, max_bytes=int(cap_gb * 2**30), keep=key)
    return _read(path, meta)


def entries(folder: Path) -> list[dict]:
    """One record per complete entry: key, bytes, last use (unix time), its metadata; oldest use first."""
    records = []
    for meta_path in sorted(Path(folder).glob("*.json")):
        npy = meta_path.with_suffix(".npy")
        size = npy.stat().st_size if npy.exists() else 0
        records.append({"key": meta_path.stem, "bytes": size, "used": meta_path.stat().st_mtime, "path": npy})
    return sorted(records, key=lambda r: r["used"])


def resolve_cap(cap: float | str | None, folder: Path) -> float | None:
    """The cap in GB of `train.cache_max_gb`: a number, None (no cap) or 'auto': what the folder holds now
    plus AUTO_CAP_FRACTION of the free space of its disk (a four-domain ViT-L sweep caches ~18 GB)."""
    if cap != "auto":
        return cap
    existing = next(p for p in (Path(folder).absolute(), *Path(folder).absolute().parents) if p.exists())
    return (size_bytes(folder) + AUTO_CAP_FRACTION * shutil.disk_usage(existing).free) / 2**30


def size_bytes(folder: Path) -> int:
    """Bytes of every file in the cache folder (complete entries and leftovers)."""
    return (
        sum(p.stat().st_size for p in Path(folder).glob("*") if p.is_file()) if Path(folder).is_dir() else 0
    )


def remove(record: dict) -> None:
    record["path"].with_suffix(".json").unlink(missing_ok=True)
    record["path"].unlink(missing_ok=True)


def evict(folder: Path, *, max_bytes: int, keep: str | None = None) -> list[str]:
    """Remove least recently used entries (never `keep`) until the folder holds at most `max_bytes`."""
    removed, total = [], size_bytes(folder)
    for record in entries(folder):
        if total <= max_bytes:
            break
        if record["key"] != keep:
            remove(record)
            total -= record["bytes"]
            removed.append(record["key"])
    return removed


def main(
    argv: list[str] | None = None, prog: str = "python -m feclip.cache", name: str = "feclip.cache"
) -> int:
    """The exit code; `prog`: the command's name in its usage, `name`: the prefix of its one-line errors."""
    parser = argparse.ArgumentParser(prog=prog, description="List or clear the frozen-feature cache.")
    parser.add_argument(
        "--dir", type=Path, default=Path("data/cache"), help="cache folder (config cache_dir)"
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="one line per entry and the total size")
    action.add_argument("--clear", action="store_true", help="remove entries (all, or --older-than)")
    parser.add_argument(
        "--older-than", type=float, default=None, metavar="DAYS", help="with --clear: unused for DAYS"
    )
    args = parser.parse_args(argv)
    return guard(lambda: _list_or_clear(args), name)


def _list_or_clear(args: argparse.Namespace) -> int:
    if args.dir.exists() and not args.dir.is_dir():
        raise CacheError(f"--dir {args.dir} is a file; expected the cache folder (config cache_dir)")
    records = entries(args.dir) if args.dir.is_dir() else []
    if args.list:
        for r in records:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["used"]))
            print(f"{r['key']}  {r['bytes'] / 2**20:10.1f} MiB  last used {used}")
        print(f"{len(records)} entries, {size_bytes(args.dir) / 2**20:.1f} MiB in {args.dir}")
        return 0
    cutoff = time.time() - 86400 * args.older_than if args.older_than is not None else float("inf")
    doomed = [r for r in records if r["used"] < cutoff]
    for record in doomed:
        remove(record)
    print(
        f"removed {len(doomed)} entries ({sum(r['bytes'] for r in doomed) / 2**20:.1f} MiB) from {args.dir}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
