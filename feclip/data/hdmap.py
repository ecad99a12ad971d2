"""The real HDMAP folder: float32 single-channel TIFFs, one tensor per domain plus a metadata table.

Layout (../shared/docs/hdmap.md section 1): `<root>/domain_<X>/{train/good, test/good,
test/fault}/NNNNNN.tiff`, (31, 95) float32 maps, values ~0-1 and up to ~3 in faults: **never clipped**. Test
file indices below the cold/warm split are cold, the others warm (000000-000499 / 000500-000999); train images
carry no condition. Synthetic sets (feclip.data.synthetic) add pixel masks under `ground_truth/fault/`.
Every bad input is a one-line `HDMAPError` naming the file or folder and what was expected.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import torch

DOMAINS = ("A", "B", "C", "D")
FOLDERS = (("train", "good", 0), ("test", "good", 0), ("test", "fault", 1))  # (split, class folder, label)
NAME = re.compile(r"^\d{6}$")
META_COLUMNS = ("domain", "split", "label", "file_index", "condition", "path")


class HDMAPError(ValueError):
    """The HDMAP folder or one of its files is not what the reader expects."""


@dataclass(frozen=True)
class HDMAPData:
    images: torch.Tensor  # (N, H, W) float32, raw values
    meta: pd.DataFrame  # row i describes images[i]: META_COLUMNS
    masks: torch.Tensor | None = None  # (N, H, W) uint8 {0, 1} (synthetic data), zeros for good images

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows) -> HDMAPData:
        """rows: bool mask (N,) or integer positions -> the selected images, meta re-indexed 0..n-1."""
        rows = np.asarray(rows)
        positions = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        index = torch.from_numpy(positions)
        masks = None if self.masks is None else self.masks[index]
        return HDMAPData(self.images[index], self.meta.iloc[positions].reset_index(drop=True), masks)


def read_tiff(path: str | Path) -> np.ndarray:
    """One HDMAP map (H, W) float32 as stored; unreadable, non-2-D or non-finite files are errors."""
    try:
        image = tifffile.imread(path)
    except Exception as error:  # tifffile raises many types for corrupt files
        raise HDMAPError(f"{path}: not a readable TIFF ({type(error).__name__}: {error})") from None
    image = np.squeeze(np.asarray(image))
    if image.ndim != 2:
        raise HDMAPError(f"{path}: expected a 2-D single-channel map, got shape {image.shape}")
    bad = int((~np.isfinite(image)).sum())
    if bad:
        raise HDMAPError(f"{path}: {bad} non-finite pixel values (NaN/inf); expected finite floats")
    return image.astype(np.float32, copy=False)


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise HDMAPError(f"missing folder {folder}: expected NNNNNN.tiff files there")
    files = sorted(folder.glob("*.tif*"))
    if not files:
        raise HDMAPError(f"empty folder {folder}: expected NNNNNN.tiff files")
    for path in files:
        if not NAME.match(path.stem):
            raise HDMAPError(f"{path}: file name is not a 6-digit index (expected e.g. 000042.tiff)")
    return sorted(files, key=lambda p: int(p.stem))


def _stack(files: list[Path], folder: Path) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=8) as pool:
        images = list(pool.map(read_tiff, files))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        first = next(p for p, image in zip(files, images, strict=True) if image.shape != images[0].shape)
        raise HDMAPError(
            f"{folder}: images of different shapes {sorted(shapes)}; first differing file {first}"
        )
    return np.stack(images)


def _masks(domain_dir: Path, files: list[Path], label: int, shape) -> np.ndarray:
    if label == 0:
        return np.zeros((len(files), *shape), dtype=np.uint8)
    masks = []
    for path in files:
        mask_path = domain_dir / "ground_truth" / "fault" / path.name
        if not mask_path.is_file():
            raise HDMAPError(f"missing mask {mask_path} for {path} (the ground_truth folder exists)")
        masks.append((tifffile.imread(mask_path) > 0).astype(np.uint8))
    return np.stack(masks)


def _domain_dir(root: Path, domain: str) -> Path:
    if not root.is_dir():
        raise HDMAPError(f"HDMAP root {root} does not exist: expected <root>/domain_<A|B|C|D>/...")
    domain_dir = root / f"domain_{domain}"
    if not domain_dir.is_dir():
        found = sorted(p.name for p in root.glob("domain_*")) or "none"
        raise HDMAPError(f"no folder {domain_dir} (domain {domain!r}); domains found in {root}: {found}")
    return domain_dir


def load_domain(root, domain: str, splits=("train", "test"), cold_warm_split: int | None = None) -> HDMAPData:
    """One domain as (N, H, W) images + metadata, ordered train/good, test/good, test/fault by file index.

    cold_warm_split: test file_index < split is cold; None -> (max test index + 1) // 2 (500 for 1000 images).
    """
    domain_dir = _domain_dir(Path(root), domain)
    with_masks = (domain_dir / "ground_truth").is_dir()
    images, masks, metas = [], [], []
    for split, folder_name, label in FOLDERS:
        if split not in splits:
            continue
        folder = domain_dir / split / folder_name
        files = _files(folder)
        stack = _stack(files, folder)
        images.append(stack)
        if with_masks:
            masks.append(_masks(domain_dir, files, label, stack.shape[1:]))
        indices = [int(p.stem) for p in files]
        metas.append(
            pd.DataFrame(
                {
                    "domain": domain,
                    "split": split,
                    "label": label,
                    "file_index": indices,
                    "path": [str(p) for p in files],
                }
            )
        )
    shapes = {stack.shape[1:] for stack in images}
    if len(shapes) > 1:
        raise HDMAPError(f"{domain_dir}: splits have different image shapes {sorted(shapes)}")
    meta = pd.concat(metas, ignore_index=True)
    meta["condition"] = _conditions(meta, cold_warm_split)
    stacked = np.concatenate(images)
    negative = int((stacked < 0).sum())
    if negative:
        warnings.warn(f"{domain_dir}: {negative} negative pixel values (kept as they are)", stacklevel=2)
    return HDMAPData(
        torch.from_numpy(stacked),
        meta[list(META_COLUMNS)],
        torch.from_numpy(np.concatenate(masks)) if with_masks else None,
    )


def _conditions(meta: pd.DataFrame, split: int | None) -> np.ndarray:
    test = (meta["split"] == "test").to_numpy()
    if split is None:
        split = (int(meta.loc[test, "file_index"].max()) + 1) // 2 if test.any() else 0
    cold = meta["file_index"].to_numpy() < split
    return np.where(test, np.where(cold, "cold", "warm"), "none")


def data_hash(data: HDMAPData) -> str:
    """Stable content hash of images + metadata (keys caches and calibration records)."""
    digest = hashlib.sha1(data.images.contiguous().numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(data.meta[["split", "label", "file_index"]], index=False).values)
    return digest.hexdigest()[:16]
