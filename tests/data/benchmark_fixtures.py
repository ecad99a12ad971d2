"""Tiny deterministic MVTec AD / VisA / BTAD trees in their published layouts, for loader and end-to-end
tests.

Every original is HEIGHT x WIDTH (48 x 64, landscape): noisy dark background, a red stripe on the left STRIPE
columns and a blue one on the right (RGB images), and for anomalous images one bright rectangle `box`
(top, left, bottom, right; bottom/right exclusive; all even) that the mask marks exactly. Each maker returns
the manifest of the test images it wrote: category, defect, label, path, box (None for good images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

HEIGHT, WIDTH = 48, 64
STRIPE = 4
DEFECT_VALUE = 230
RED, BLUE = (200, 0, 0), (0, 0, 200)


def defect_box(k: int) -> tuple[int, int, int, int]:
    """The k-th anomalous image's rectangle (top, left, bottom, right), inside the centre 48 x 48."""
    top, left = 12 + 4 * (k % 3), 16 + 8 * (k % 3)
    return top, left, top + 12, left + 16


def draw(seed: int, box, gray: bool = False) -> tuple[Image.Image, Image.Image | None]:
    """One original (RGB, or L when gray) and its mask (L, 0/255; None for a good image)."""
    rng = np.random.default_rng(seed)
    pixels = np.repeat(rng.integers(30, 50, (HEIGHT, WIDTH, 1), dtype=np.uint8), 3, axis=2)
    if not gray:
        pixels[:, :STRIPE] = RED
        pixels[:, -STRIPE:] = BLUE
    if box is None:
        return _image(pixels, gray), None
    top, left, bottom, right = box
    pixels[top:bottom, left:right] = DEFECT_VALUE
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[top:bottom, left:right] = 255
    return _image(pixels, gray), Image.fromarray(mask)


def _image(pixels: np.ndarray, gray: bool) -> Image.Image:
    return Image.fromarray(pixels[..., 0]) if gray else Image.fromarray(pixels)


def _save(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _entry(category: str, defect: str, path: Path, box) -> dict:
    return {
        "category": category,
        "defect": defect,
        "label": int(box is not None),
        "path": str(path),
        "box": box,
    }


def make_mvtec_fixture(root) -> pd.DataFrame:
    """bottle (RGB) and screw (grayscale): test/good x3, test/crack x2, test/hole x1, with masks."""
    root, written, seed = Path(root), [], 0
    for category, gray in (("bottle", False), ("screw", True)):
        _save(draw(999, None, gray)[0], root / category / "train" / "good" / "000.png")
        for defect, count in (("good", 3), ("crack", 2), ("hole", 1)):
            for i in range(count):
                seed += 1
                box = None if defect == "good" else defect_box(seed)
                image, mask = draw(seed, box, gray)
                path = _save(image, root / category / "test" / defect / f"{i:03d}.png")
                if mask is not None:
                    _save(mask, root / category / "ground_truth" / defect / f"{i:03d}_mask.png")
                written.append(_entry(category, defect, path, box))
    return pd.DataFrame(written)


def make_visa_fixture(root) -> pd.DataFrame:
    """candle and pcb1: 2 train + 3 test normals and 3 test anomalies each; masks {0, 1}."""
    root, written, rows, seed = Path(root), [], [], 100
    for category in ("candle", "pcb1"):
        for split, label, count in (("train", "normal", 2), ("test", "normal", 3), ("test", "anomaly", 3)):
            for i in range(count):
                seed += 1
                box = defect_box(seed) if label == "anomaly" else None
                image, mask = draw(seed, box)
                folder = "Normal" if label == "normal" else "Anomaly"
                name = f"{split}_{i:03d}.png"
                image_rel = f"{category}/Data/Images/{folder}/{name}"
                mask_rel = "" if mask is None else f"{category}/Data/Masks/Anomaly/{name}"
                _save(image, root / image_rel)
                if mask is not None:
                    _save(mask.point(lambda v: v // 255), root / mask_rel)
                rows.append(
                    {"object": category, "split": split, "label": label, "image": image_rel, "mask": mask_rel}
                )
                if split == "test":
                    written.append(
                        _entry(category, "good" if box is None else "anomaly", root / image_rel, box)
                    )
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(root / "split_csv" / "1cls.csv", index=False)
    return pd.DataFrame(written)


def make_btad_fixture(root) -> pd.DataFrame:
    """01 (RGB .bmp, .png masks) and 02 (grayscale .png, RGB .bmp masks): test/ok x3 and test/ko x3 each."""
    root, written, seed = Path(root), [], 200
    for category, image_suffix, mask_suffix, gray in (
        ("01", ".bmp", ".png", False),
        ("02", ".png", ".bmp", True),
    ):
        _save(draw(998, None, gray)[0], root / category / "train" / "ok" / f"000{image_suffix}")
        for folder in ("ok", "ko"):
            for i in range(3):
                seed += 1
                box = defect_box(seed) if folder == "ko" else None
                image, mask = draw(seed, box, gray)
                path = _save(image, root / category / "test" / folder / f"{i:04d}{image_suffix}")
                if mask is not None:
                    _save(
                        mask.convert("RGB"), root / category / "ground_truth" / "ko" / f"{i:04d}{mask_suffix}"
                    )
                written.append(_entry(category, "good" if box is None else "ko", path, box))
    return pd.DataFrame(written)
