"""The paper's benchmark datasets (MVTec AD, VisA, BTAD) as uint8 tensors at model input size, with masks.

`load_benchmark` lists a dataset's test images (and masks) from its published folder layout, then decodes
them in a thread pool: images (N, 3, h, w) uint8 RGB, masks (N, h, w) uint8 {0, 1} (all-zero for good
images), and a meta table (dataset, category, label, defect, path). Geometry:
- `squash`: the whole image resized to (h, w), bilinear; nothing is cropped (the default);
- `shorter_side_center_crop`: scaled (bilinear) until it covers (h, w), then centre-cropped; for a square size
  this is CLIP's "shorter side to min(size), centre crop" of the earlier re-implementation.
Masks get the same geometry with nearest resampling. `list_benchmark` lists and checks without decoding
(a job checks its datasets before training). A missing or malformed dataset fails with a one-line
`BenchmarkError` naming the expected layout and the first path checked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from feclip.errors import FeclipError
from feclip.files import listed
from feclip.registry import Registry, choices

MVTEC_CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
VISA_CATEGORIES = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)
BTAD_CATEGORIES = ("01", "02", "03")
GEOMETRIES = choices("image geometry", "aux.geometry", ("squash", "shorter_side_center_crop"))
MVTEC_LAYOUT = (
    "<root>/<category>/test/<defect>/*.png with masks <root>/<category>/ground_truth/<defect>/"
    "<stem>_mask.png (none for good)"
)
VISA_LAYOUT = (
    "<root>/split_csv/1cls.csv with columns object, split, label, image, mask (paths relative to <root>)"
)
BTAD_LAYOUT = "<root>/<01|02|03>/test/{ok,ko}/*.bmp|png with masks <root>/<NN>/ground_truth/ko/<stem>.png|bmp"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
BTAD_SUFFIXES = (".bmp", ".png")
BTAD_MASK_SUFFIXES = (".png", ".bmp")
META_COLUMNS = ["dataset", "category", "label", "defect", "path"]


class BenchmarkError(FeclipError):
    """A benchmark dataset is missing or does not have its published layout; names the path and the layout."""


@dataclass(frozen=True)
class BenchmarkData:
    images: torch.Tensor  # (N, 3, h, w) uint8 RGB, at model input size (geometry applied)
    masks: torch.Tensor  # (N, h, w) uint8 {0, 1}; all-zero for good images
    meta: pd.DataFrame  # row i = images[i]: dataset, category, label (0 good / 1 anomaly), defect, path


def load_benchmark(
    name: str,
    root,
    size: tuple[int, int],
    geometry: str = "squash",
    categories: list[str] | None = None,
) -> BenchmarkData:
    """Every test image of dataset `name` ("mvtec" | "visa" | "btad") under `root`, resized to size (h, w).

    categories: a subset of the dataset's categories (default: every category present under `root`).
    """
    size = _size(size)
    listing = _listing(name, root, geometry, categories)
    images, masks = _decode_all(listing, size, geometry, name)
    return BenchmarkData(images, masks, listing[META_COLUMNS].reset_index(drop=True))


def list_benchmark(
    name: str, root, geometry: str = "squash", categories: list[str] | None = None
) -> pd.DataFrame:
    """The meta table `load_benchmark` would return, without decoding: checks the arguments and the layout
    in seconds (before a long training run)."""
    return _listing(name, root, geometry, categories)[META_COLUMNS]


def _listing(name: str, root, geometry: str, categories) -> pd.DataFrame:
    """Validated arguments -> one row per test image: META_COLUMNS + mask_path ("" for good images)."""
    benchmark = BENCHMARKS.get_entry(name, key="benchmark")
    GEOMETRIES.get_entry(geometry, key="geometry")
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"{name} root {root} is not a directory; expected {benchmark.layout}")
    if categories is not None:
        unknown = [c for c in categories if c not in benchmark.categories]
        if unknown:
            raise BenchmarkError(
                f"unknown {name} categories {unknown}; expected some of: {', '.join(benchmark.categories)}"
            )
    return benchmark.lister(root, categories)


def _size(size) -> tuple[int, int]:
    values = tuple(size)
    if len(values) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in values):
        raise BenchmarkError(f"size={size!r}: expected (height, width) of positive integers")
    return int(values[0]), int(values[1])


def _row(name: str, category: str, defect: str, image: Path, mask: Path | None) -> dict:
    return {
        "dataset": name,
        "category": category,
        "label": int(mask is not None),
        "defect": defect,
        "path": str(image),
        "mask_path": "" if mask is None else str(mask),
    }


def _present(name: str, root: Path, categories, folder: str) -> list[str]:
    """Requested categories (default: known ones present) whose `<root>/<category>/<folder>` exists."""
    wanted = list(categories) if categories is not None else list(BENCHMARKS[name].categories)
    present = [c for c in wanted if (root / c / folder).is_dir()]
    missing = [c for c in wanted if c not in present]
    if not present or (categories is not None and missing):
        first = root / (missing or wanted)[0] / folder
        raise BenchmarkError(f"no {name} category folder {first}; expected {BENCHMARKS[name].layout}")
    return present


def _files(folder: Path, suffixes: tuple[str, ...], name: str) -> list[Path]:
    """The images of one benchmark folder; other entries are named in one note, a dangling image link is an
    error."""
    files = listed(folder, suffixes)
    broken = [p for p in files if not p.is_file()]
    if broken:
        raise BenchmarkError(
            f"{broken[0]}: not a readable file (a dangling link?; {len(broken)} such entries in {folder}); "
            "expected every image entry to be a file: fix or remove them"
        )
    if not files:
        raise BenchmarkError(
            f"no {'/'.join(suffixes)} images in {folder}; expected {BENCHMARKS[name].layout}"
        )
    return files


def _existing_mask(candidates: list[Path], image: Path, name: str) -> Path:
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise BenchmarkError(
        f"missing mask {candidates[0]} for anomalous image {image}; expected {BENCHMARKS[name].layout}"
    )


def _list_mvtec(root: Path, categories) -> pd.DataFrame:
    rows = []
    for category in _present("mvtec", root, categories, "test"):
        defects = sorted(p.name for p in (root / category / "test").iterdir() if p.is_dir())
        if not defects:
            raise BenchmarkError(f"no defect folders in {root / category / 'test'}; expected {MVTEC_LAYOUT}")
        for defect in defects:
            for image in _files(root / category / "test" / defect, (".png",), "mvtec"):
                mask = None
                if defect != "good":
                    expected = root / category / "ground_truth" / defect / f"{image.stem}_mask.png"
                    mask = _existing_mask([expected], image, "mvtec")
                rows.append(_row("mvtec", category, defect, image, mask))
    return pd.DataFrame(rows)


def _list_visa(root: Path, categories) -> pd.DataFrame:
    csv = root / "split_csv" / "1cls.csv"
    if not csv.is_file():
        raise BenchmarkError(f"missing VisA split file {csv}; expected {VISA_LAYOUT}")
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    missing = [c for c in VISA_COLUMNS if c not in table.columns]
    if missing:
        raise BenchmarkError(f"{csv} lacks columns {missing}; expected {VISA_LAYOUT}")
    test = table[table["split"] == "test"]
    bad_labels = sorted(set(test["label"]) - {"normal", "anomaly"})
    if bad_labels:
        raise BenchmarkError(f"{csv}: labels {bad_labels}; expected 'normal' or 'anomaly'")
    objects = list(categories) if categories is not None else sorted(set(test["object"]))
    absent = [c for c in objects if c not in set(test["object"])]
    if not objects or absent:
        raise BenchmarkError(
            f"no test rows of VisA objects {absent or objects} in {csv}; expected {VISA_LAYOUT}"
        )
    rows = []
    for record in test[test["object"].isin(objects)].sort_values(["object", "label", "image"]).itertuples():
        image = root / record.image
        if not image.is_file():
            raise BenchmarkError(f"missing VisA image {image} (listed in {csv}); expected {VISA_LAYOUT}")
        mask = None
        if record.label == "anomaly":
            if not record.mask:
                raise BenchmarkError(f"{csv}: anomalous image {record.image} has no mask path")
            mask = _existing_mask([root / record.mask], image, "visa")
        rows.append(_row("visa", record.object, "good" if mask is None else "anomaly", image, mask))
    return pd.DataFrame(rows)


def _list_btad(root: Path, categories) -> pd.DataFrame:
    rows = []
    for category in _present("btad", root, categories, "test"):
        for folder in ("ko", "ok"):
            for image in _files(root / category / "test" / folder, BTAD_SUFFIXES, "btad"):
                mask = None
                if folder == "ko":
                    truth = root / category / "ground_truth" / "ko"
                    mask = _existing_mask(
                        [truth / f"{image.stem}{s}" for s in BTAD_MASK_SUFFIXES], image, "btad"
                    )
                rows.append(_row("btad", category, "good" if folder == "ok" else "ko", image, mask))
    return pd.DataFrame(rows)


def _decode_all(
    listing: pd.DataFrame, size: tuple[int, int], geometry: str, name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every listed image and mask in a thread pool -> images (N, 3, h, w), masks (N, h, w) uint8."""
    images = np.empty((len(listing), 3, *size), dtype=np.uint8)
    masks = np.zeros((len(listing), *size), dtype=np.uint8)

    paths, mask_paths = listing["path"].tolist(), listing["mask_path"].tolist()

    def decode(i: int) -> None:
        images[i], masks[i] = _decode(paths[i], mask_paths[i], size, geometry)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for _ in tqdm(pool.map(decode, range(len(listing))), total=len(listing), desc=name, leave=False):
            pass
    return torch.from_numpy(images), torch.from_numpy(masks)


def _decode(path: str, mask_path: str, size, geometry) -> tuple[np.ndarray, np.ndarray]:
    """One image (3, h, w) uint8 RGB and its mask (h, w) uint8 {0, 1} (zeros when mask_path is "")."""
    image = _open(path).convert("RGB")
    if not mask_path:
        mask = Image.new("L", image.size, 0)
    else:
        mask = _binary_mask(_open(mask_path))
        if mask.size != image.size:
            mask = mask.resize(image.size, Image.NEAREST)
    image = _geometry(image, size, geometry, Image.BILINEAR)
    mask = _geometry(mask, size, geometry, Image.NEAREST)
    return np.asarray(image).transpose(2, 0, 1), np.asarray(mask)


def _open(path: str) -> Image.Image:
    try:
        with Image.open(path) as file:
            file.load()
            return file
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for unreadable or corrupt files
        reason = " ".join(str(error).split())
        raise BenchmarkError(f"cannot decode image {path}: {reason}") from error


def _binary_mask(mask: Image.Image) -> Image.Image:
    """Any mask mode (L, P indices, RGB, 1) -> mode L with values {0, 1} (pixel > 0 in any channel)."""
    values = np.asarray(mask)
    if values.ndim == 3:
        values = values.max(axis=2)
    return Image.fromarray((values > 0).astype(np.uint8))


def _geometry(image: Image.Image, size: tuple[int, int], geometry: str, resample) -> Image.Image:
    """Resize to size (h, w): squash the whole frame, or scale to cover (h, w) and crop the centre."""
    height, width = size
    if geometry == "squash":
        return image.resize((width, height), resample)
    scale = max(height / image.height, width / image.width)
    scaled_w, scaled_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
    left, top = (scaled_w - width) // 2, (scaled_h - height) // 2
    return image.resize((scaled_w, scaled_h), resample).crop((left, top, left + width, top + height))


@dataclass(frozen=True)
class Benchmark:
    """One benchmark dataset: its categories, published layout, lister and, where the FE-CLIP paper reports
    it, the paper's macro numbers in percent (image AUROC / AP, pixel AUROC / PRO; docs/method.md §13)."""

    categories: tuple[str, ...]
    layout: str
    lister: Callable[[Path, list[str] | None], pd.DataFrame]
    paper: dict[str, float] | None = None


BENCHMARKS: Registry[Benchmark] = Registry(
    "benchmark dataset",
    key="eval.datasets.N.name",
    entries={
        "mvtec": Benchmark(
            MVTEC_CATEGORIES,
            MVTEC_LAYOUT,
            _list_mvtec,
            {"image_auroc": 91.9, "image_ap": 96.5, "pixel_auroc": 92.6, "pro": 88.3},
        ),
        "visa": Benchmark(
            VISA_CATEGORIES,
            VISA_LAYOUT,
            _list_visa,
            {"image_auroc": 84.6, "image_ap": 86.6, "pixel_auroc": 95.9, "pro": 92.8},
        ),
        "btad": Benchmark(
            BTAD_CATEGORIES,
            BTAD_LAYOUT,
            _list_btad,
            {"image_auroc": 90.3, "image_ap": 90.0, "pixel_auroc": 95.6, "pro": 80.4},
        ),
    },
)
