"""The real HDMAP folder: float32 single-channel TIFFs, one tensor per domain plus a metadata table.

Layout (docs/data.md §1): `<root>/domain_<X>/{train/good, test/good,
test/fault}/NNNNNN.tiff`, (31, 95) float32 maps, values ~0-1 and up to ~3 in faults: **never clipped**. Test
file indices below the cold/warm split are cold, the others warm (000000-000499 / 000500-000999); train images
carry no condition. Synthetic sets (feclip.data.synthetic) add pixel masks under `ground_truth/fault/`.
Every bad input is a one-line `HDMAPError` naming the file or folder and what was expected.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import tifffile

from feclip.errors import FeclipError
from feclip.files import listed
from feclip.registry import Registry

if TYPE_CHECKING:  # torch is imported where tensors are made: reading DOMAINS (a report) loads no torch
    import torch


@dataclass(frozen=True)
class Domain:
    """One HDMAP domain: its sensor, data type and the scaling maximum (raw units), docs/data.md §1.2."""

    sensor: str
    data_type: str
    user_max: float


DOMAINS: Registry[Domain] = Registry(
    "HDMAP domain",
    key="domain.name",
    entries={
        "A": Domain("Class1/1", "3_TSA_DIF", 0.324670),
        "B": Domain("Class1/1", "1_TSA_DIF", 1.324418),
        "C": Domain("Class3/1", "3_TSA_DIF", 0.087341),
        "D": Domain("Class3/1", "1_TSA_DIF", 0.418999),
    },
)
FOLDERS = (("train", "good", 0), ("test", "good", 0), ("test", "fault", 1))  # (split, class folder, label)
NAME = re.compile(r"[0-9]{6}")
SPLITS = ("train", "test")
TIFF_SUFFIXES = (".tif", ".tiff")
COLD_WARM_SPLIT = 500  # the HDMAP layout: test file index 0-499 cold, 500-999 warm (docs/data.md §1.1)
META_COLUMNS = ("domain", "split", "label", "file_index", "condition", "path")


class HDMAPError(FeclipError):
    """The HDMAP folder or one of its files is not what the reader expects."""


@dataclass(frozen=True)
class HDMAPData:
    """A job's images and everything known about them, row i describing images[i]: the metadata (META_COLUMNS
    and, once scored, the prediction columns), pixel masks and anomaly maps. Subsets keep them together."""

    images: torch.Tensor  # (N, H, W) float32, raw values
    meta: pd.DataFrame  # META_COLUMNS (+ score, map_max, map_topk, gate columns after `with_predictions`)
    masks: torch.Tensor | None = None  # (N, H, W) uint8 {0, 1} if ground_truth/fault/ exists; 0 for good
    maps: torch.Tensor | None = None  # (N, H, W) float32 anomaly maps at the native size, once scored

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows) -> HDMAPData:
        """rows: bool mask (N,) or integer positions -> the selected rows of everything, meta re-indexed."""
        rows = np.asarray(rows)
        if rows.dtype == bool and rows.shape != (len(self),):
            raise HDMAPError(f"subset: bool mask of shape {rows.shape}, expected ({len(self)},)")
        positions = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        import torch

        index = torch.from_numpy(positions)
        return HDMAPData(
            self.images[index],
            self.meta.iloc[positions].reset_index(drop=True),
            None if self.masks is None else self.masks[index],
            None if self.maps is None else self.maps[index],
        )

    def with_predictions(self, columns: dict[str, np.ndarray], maps: torch.Tensor) -> HDMAPData:
        """The same rows with prediction `columns` (each (N,)) added to meta and `maps` (N, H, W) set."""
        if len(maps) != len(self) or any(len(v) != len(self) for v in columns.values()):
            raise HDMAPError(f"predictions for {len(maps)} images, expected {len(self)}")
        meta = self.meta.assign(**{name: np.asarray(values) for name, values in columns.items()})
        return HDMAPData(self.images, meta, self.masks, maps)


def read_tiff(path: str | Path, *, allow_integer: bool = False) -> np.ndarray:
    """One HDMAP map (H, W) float32 as stored; unreadable, non-2-D or non-finite files are errors, and so are
    integer TIFFs (HDMAP maps are float32: an integer file is in other units) unless `allow_integer`, and
    float64 values beyond float32's range (they would become inf)."""
    try:
        image = tifffile.imread(path)
    except Exception as error:  # tifffile raises many types for corrupt files
        reason = " ".join(str(error).split())  # one line, whatever tifffile put in the message
        raise HDMAPError(f"{path}: not a readable TIFF ({type(error).__name__}: {reason})") from None
    image = np.squeeze(np.asarray(image))
    if image.dtype.kind in "biu" and not allow_integer:
        raise HDMAPError(
            f"{path}: integer TIFF ({image.dtype}, values up to {image.max()}); HDMAP maps are float32 in "
            "scaled units, so it is not converted; expected float32, or data.allow_integer=true to convert it"
        )
    if image.ndim != 2:
        raise HDMAPError(f"{path}: expected a 2-D single-channel map, got shape {image.shape}")
    bad = int((~np.isfinite(image)).sum())
    if bad:
        raise HDMAPError(f"{path}: {bad} non-finite pixel values (NaN/inf); expected finite floats")
    with np.errstate(over="ignore"):  # reported below, with the file and the value
        converted = image.astype(np.float32, copy=False)
    if not np.isfinite(converted).all():
        row, col = np.argwhere(~np.isfinite(converted))[0]
        raise HDMAPError(
            f"{path}: {image.dtype} value {image[row, col]:.6g} at (row {row}, column {col}) is beyond "
            f"float32's range (|x| <= {np.finfo(np.float32).max:.4g}); expected HDMAP values in scaled units"
        )
    return converted


def list_tiffs(folder: Path) -> list[Path]:
    """The *.tif / *.tiff entries of `folder` (any case), sorted; the others named in one note (`listed`)."""
    return listed(folder, TIFF_SUFFIXES)


def _files(folder: Path) -> list[Path]:
    """The HDMAP TIFFs of one class folder in file-index order; every TIFF entry must be a readable file (a
    dangling symlink is an error, not a skipped image)."""
    if not folder.is_dir():
        raise HDMAPError(f"missing folder {folder}: expected NNNNNN.tiff files there")
    files = list_tiffs(folder)
    if not files:
        raise HDMAPError(f"empty folder {folder}: expected NNNNNN.tiff files")
    broken = [p for p in files if not p.is_file()]
    if broken:
        first = broken[0]
        what = f"a symlink to {os.readlink(first)}, which is missing" if first.is_symlink() else "not a file"
        raise HDMAPError(
            f"{first}: {what} ({len(broken)} such entries in {folder}); expected every TIFF entry to be a "
            "readable file: fix or remove them"
        )
    for path in files:
        if not NAME.fullmatch(path.stem):
            raise HDMAPError(f"{path}: file name is not a 6-digit index (expected e.g. 000042.tiff)")
    files = sorted(files, key=lambda p: int(p.stem))
    for before, path in pairwise(files):
        if before.stem == path.stem:
            raise HDMAPError(
                f"{path}: file index {path.stem} also used by {before.name}; expected one file each"
            )
    return files


def _stack(files: list[Path], folder: Path, allow_integer: bool) -> np.ndarray:
    with ThreadPoolExecutor(max_workers=8) as pool:
        images = list(pool.map(lambda path: read_tiff(path, allow_integer=allow_integer), files))
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
        first = next(p for p, image in zip(files, images, strict=True) if image.shape != images[0].shape)
        raise HDMAPError(
            f"{folder}: images of different shapes {sorted(shapes)}; first differing file {first}"
        )
    return np.stack(images)


def _masks(mask_dir: Path, files: list[Path], label: int, shape) -> np.ndarray:
    """masks (n, H, W) uint8 {0, 1} for one class folder: zeros for good, mask_dir/<name> (> 0) for faults."""
    if label == 0:
        return np.zeros((len(files), *shape), dtype=np.uint8)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return np.stack(list(pool.map(lambda path: _mask(mask_dir / path.name, path, shape), files)))


def _mask(mask_path: Path, image_path: Path, shape) -> np.ndarray:
    if not mask_path.is_file():
        raise HDMAPError(f"missing mask {mask_path} for {image_path} (the folder {mask_path.parent} exists)")
    mask = read_tiff(mask_path, allow_integer=True)  # masks are uint8 {0, 1}
    if mask.shape != tuple(shape):
        raise HDMAPError(f"{mask_path}: mask shape {mask.shape}, expected the image shape {tuple(shape)}")
    return (mask > 0).astype(np.uint8)


def _domain_dir(root: Path, domain: str) -> Path:
    if not root.is_dir():
        raise HDMAPError(f"HDMAP root {root} does not exist: expected <root>/domain_<A|B|C|D>/...")
    domain_dir = root / f"domain_{domain}"
    if not domain_dir.is_dir():
        found = sorted(p.name for p in root.glob("domain_*")) or "none"
        raise HDMAPError(f"no folder {domain_dir} (domain {domain!r}); domains found in {root}: {found}")
    return domain_dir


def load_domain(
    root,
    domain: str,
    splits=("train", "test"),
    *,
    cold_warm_split: int = COLD_WARM_SPLIT,
    allow_integer: bool = False,
) -> HDMAPData:
    """One domain as (N, H, W) images + metadata, ordered train/good, test/good, test/fault by file index.

    cold_warm_split: test file_index < split is cold, split <= index < 2 * split warm (the HDMAP layout:
    500); a test file index outside [0, 2 * split) or a test class folder without both conditions contradicts
    it and is an error. allow_integer: convert integer TIFFs instead of refusing them.
    """
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    if not splits or not set(splits) <= set(SPLITS):
        raise HDMAPError(f"splits={splits!r}: expected a non-empty selection of {SPLITS}")
    domain_dir = _domain_dir(Path(root), domain)
    mask_dir = domain_dir / "ground_truth" / "fault"
    with_masks = mask_dir.is_dir()
    images, masks, metas = [], [], []
    for split, folder_name, label in FOLDERS:
        if split not in splits:
            continue
        folder = domain_dir / split / folder_name
        files = _files(folder)
        if split == "test":
            _check_layout(files, folder, cold_warm_split)
        stack = _stack(files, folder, allow_integer)
        images.append(stack)
        if with_masks:
            masks.append(_masks(mask_dir, files, label, stack.shape[1:]))
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
    import torch

    return HDMAPData(
        torch.from_numpy(stacked),
        meta[list(META_COLUMNS)],
        torch.from_numpy(np.concatenate(masks)) if with_masks else None,
    )


def _check_layout(files: list[Path], folder: Path, split: int) -> None:
    """Test file indices must fit the layout: [0, split) cold, [split, 2 * split) warm, both present."""
    layout = f"index < {split} cold, {split} <= index < {2 * split} warm"
    beyond = [p for p in files if int(p.stem) >= 2 * split]
    if beyond:
        raise HDMAPError(
            f"{beyond[0]}: file index {int(beyond[0].stem)} contradicts the cold/warm layout ({layout}); "
            "expected HDMAP's 000000-000999, or set data.cold_warm_split for another layout"
        )
    cold = sum(int(p.stem) < split for p in files)
    if cold == 0 or cold == len(files):
        raise HDMAPError(
            f"{folder}: {cold} cold and {len(files) - cold} warm files for data.cold_warm_split={split} "
            f"({layout}); expected both conditions"
        )


def _conditions(meta: pd.DataFrame, split: int) -> np.ndarray:
    test = (meta["split"] == "test").to_numpy()
    cold = meta["file_index"].to_numpy() < split
    return np.where(test, np.where(cold, "cold", "warm"), "none")


def data_hash(data: HDMAPData) -> str:
    """Stable content hash (16 hex digits) of images, masks and meta (domain, split, label, file index,
    condition): keys caches and calibration records; a changed pixel or cold/warm split gives a new hash."""
    digest = hashlib.sha1(str(tuple(data.images.shape)).encode())
    digest.update(data.images.detach().cpu().contiguous().numpy().tobytes())
    if data.masks is not None:
        digest.update(data.masks.cpu().contiguous().numpy().tobytes())
    columns = ["domain", "split", "label", "file_index", "condition"]
    digest.update(pd.util.hash_pandas_object(data.meta[columns], index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def split_validation(train: HDMAPData, fraction: float, seed: int) -> tuple[HDMAPData, HDMAPData]:
    """(fit, val): a seeded slice of train normals (at least one), never trained on, for thresholds and
    calibration; a fraction that leaves no image to fit on is a one-line error."""
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, round(fraction * len(train)))
    if n_val >= len(train):
        raise HDMAPError(
            f"data.val_fraction={fraction} holds out {n_val} of the {len(train)} train/good images, leaving "
            f"none to train on; expected at most {(len(train) - 1) / len(train):.3g} for {len(train)} images"
        )
    return train.subset(np.sort(order[n_val:])), train.subset(np.sort(order[:n_val]))
