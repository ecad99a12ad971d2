"""Apply a saved model to unlabelled HDMAP TIFFs: scores, calibrated decisions, optional overlays.

A checkpoint directory is self-describing: `feclip.model.checkpoint` stores the adapters + fc and the model
description; `predictor.json` (written here) adds the input transform, the text features, the calibration
record and the fitted cold/warm gate; a random-init backbone's weights are stored too. `load_predictor`
rebuilds all of it without the original Hydra config. Unreadable files are reported, not fatal.

    python run.py mode=predict model.checkpoint=outputs/.../checkpoint predict.input=/data/new_maps
"""

from __future__ import annotations

import glob
import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from feclip import calibration
from feclip.data.hdmap import read_tiff
from feclip.errors import FeclipError
from feclip.gating import make_gate
from feclip.model.backbone import ClipBackbone
from feclip.model.checkpoint import load_checkpoint, read_description
from feclip.model.feclip import FEClip, FEClipConfig

PREDICTOR_FILE = "predictor.json"
BACKBONE_WEIGHTS = "backbone.safetensors"


class PredictError(FeclipError):
    """The input folder or the checkpoint cannot be used for prediction."""


@dataclass
class Predictor:
    model: FEClip
    to_input: torch.nn.Module  # raw (B, H, W) -> model input (B, 3, h, w)
    record: dict[str, Any]  # calibration record (feclip.calibration)
    gate: Any | None  # a fitted feclip.gating gate, or None
    image_shape: tuple[int, int]  # native (H, W) of the images the model was calibrated on


def save_predictor(
    directory: Path, model: FEClip, spec: dict, record: dict, gate_state: dict | None, image_shape
) -> None:
    """Write what `load_predictor` needs beside the checkpoint (and the weights of a random-init backbone)."""
    content = {
        "input": spec,
        "calibration": record,
        "gate": gate_state,
        "image_shape": list(image_shape),
        "text_features": model.text_features.cpu().tolist(),
    }
    (directory / PREDICTOR_FILE).write_text(json.dumps(content, indent=2))
    if spec["pretrained"] is None:
        weights = {name: value.contiguous().cpu() for name, value in model.backbone.state_dict().items()}
        save_file(weights, directory / BACKBONE_WEIGHTS)


def load_predictor(directory: str | Path, device: torch.device) -> Predictor:
    """Rebuild model, input transform, calibration and gate from a checkpoint directory."""
    from feclip.runner import hdmap_input

    directory = Path(directory)
    if not (directory / PREDICTOR_FILE).is_file():
        raise PredictError(f"{directory} is not a feclip model directory: {PREDICTOR_FILE} is missing")
    content = json.loads((directory / PREDICTOR_FILE).read_text())
    description = read_description(directory)
    pretrained = content["input"]["pretrained"]
    backbone = ClipBackbone(description["backbone"], pretrained)
    if pretrained is None:
        backbone.load_state_dict(load_file(directory / BACKBONE_WEIGHTS))
    text = torch.tensor(content["text_features"])
    model = FEClip(backbone, FEClipConfig(**description["config"]), text, description.get("input_size"))
    load_checkpoint(directory, model)
    gate = make_gate(**content["gate"]) if _deployable(content["gate"]) else None
    return Predictor(
        model.to(device).eval(),
        hdmap_input(content["input"], backbone),
        content["calibration"],
        gate,
        tuple(content["image_shape"]),
    )


def _deployable(gate_state: dict | None) -> bool:
    """Gates that can label unlabelled files: not none, not the oracle (it reads the test file index)."""
    return bool(gate_state) and gate_state["name"] not in ("none", "oracle")


def list_inputs(pattern: str) -> list[Path]:
    """TIFF files of a folder (sorted) or of a glob; none found is an error."""
    path = Path(pattern)
    files = sorted(path.glob("*.tif*")) if path.is_dir() else sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise PredictError(f"no TIFF files at {pattern}: expected a folder of *.tiff files or a glob pattern")
    return files


def _read(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """(image or None, status): ok | shape_mismatch HxW (still scored) | error: reason."""
    try:
        image = read_tiff(path)
    except (ValueError, OSError) as error:
        return None, f"error: {error}"
    return image, "ok" if image.shape == tuple(shape) else f"shape_mismatch {image.shape[0]}x{image.shape[1]}"


@torch.inference_mode()
def _score(predictor: Predictor, images: list[np.ndarray], device, autocast) -> dict[str, Any]:
    """Scores, map maxima, native-size maps and gate decisions of same-shape images."""
    raw = torch.from_numpy(np.stack(images)).to(device)
    with autocast:
        out = predictor.model(predictor.to_input(raw))
    maps = F.interpolate(out.map.float()[:, None], size=raw.shape[-2:], mode="bilinear")[:, 0]
    gate = predictor.gate.decide(raw, out.cls_embedding.float(), None).condition if predictor.gate else None
    return {
        "score": out.score.float().cpu().numpy(),
        "map_max": out.map.float().flatten(1).amax(1).cpu().numpy(),
        "map": maps.cpu().numpy(),
        "gate": gate,
    }


def predict_files(
    predictor: Predictor,
    files: list[Path],
    batch_size: int,
    device: torch.device,
    autocast: AbstractContextManager,
    operating_point: str,
    on_flagged: Callable[[Path, np.ndarray, np.ndarray], None] = lambda path, image, amap: None,
) -> pd.DataFrame:
    """One row per file: path, status, score, map_max, decision, zscore (and gate); streamed in batches."""
    threshold = calibration.threshold(predictor.record, operating_point)
    rows = []
    for start in tqdm(range(0, len(files), batch_size), desc="predict", unit="batch"):
        read = [(path, *_read(path, predictor.image_shape)) for path in files[start : start + batch_size]]
        for shape in {image.shape for _, image, _ in read if image is not None}:
            group = [
                (path, image, status)
                for path, image, status in read
                if image is not None and image.shape == shape
            ]
            result = _score(predictor, [image for _, image, _ in group], device, autocast)
            for j, (path, image, status) in enumerate(group):
                score = float(result["score"][j])
                row = {
                    "path": str(path),
                    "status": status,
                    "score": score,
                    "map_max": float(result["map_max"][j]),
                }
                row["decision"] = "fault" if score > threshold else "normal"
                row["zscore"] = float(calibration.zscore(np.array([score]), predictor.record)[0])
                if result["gate"] is not None:
                    row["gate"] = str(result["gate"][j])
                if row["decision"] == "fault":
                    on_flagged(path, image, result["map"][j])
                rows.append(row)
        rows += [{"path": str(path), "status": status} for path, image, status in read if image is None]
    order = {str(path): i for i, path in enumerate(files)}
    return pd.DataFrame(rows).sort_values("path", key=lambda s: s.map(order)).reset_index(drop=True)


def summary(table: pd.DataFrame, operating_point: str) -> dict[str, Any]:
    """Counts for the log and MLflow: files, flagged, unreadable (with the first paths), shape mismatches."""
    unreadable = table[table["status"].str.startswith("error")]
    return {
        "n_files": len(table),
        "n_flagged": int((table.get("decision") == "fault").sum()),
        "n_unreadable": len(unreadable),
        "first_unreadable": unreadable["path"].head(5).tolist(),
        "n_shape_mismatch": int(table["status"].str.startswith("shape_mismatch").sum()),
        "operating_point": operating_point,
    }


def overlay_writer(directory: Path) -> Callable[[Path, np.ndarray, np.ndarray], None]:
    """on_flagged callback writing `<directory>/<stem>.png`: the image and its anomaly map."""
    from feclip import plots

    directory.mkdir(parents=True, exist_ok=True)

    def write(path: Path, image: np.ndarray, amap: np.ndarray) -> None:
        figure = plots.anomaly_map_grid(image[None], amap[None], [path.name], ncols=1)
        figure.savefig(directory / f"{path.stem}.png", dpi=110)

    return write


def predict_job(cfg: DictConfig, output_dir: Path, tracker) -> dict[str, float]:
    """mode=predict: score predict.input with model.checkpoint, write predictions.csv + summary.json."""
    from feclip.runner import runtime

    rt = runtime(cfg)
    predictor = load_predictor(cfg.model.checkpoint, rt.device)
    files = list_inputs(str(cfg.predict.input))
    point = cfg.predict.operating_point or predictor.record["operating_point"]
    out = Path(cfg.predict.out) if cfg.predict.out else output_dir
    out.mkdir(parents=True, exist_ok=True)
    on_flagged = overlay_writer(out / "overlays") if cfg.predict.overlays else (lambda *args: None)
    table = predict_files(predictor, files, cfg.predict.batch_size, rt.device, rt.autocast, point, on_flagged)
    table.to_csv(out / "predictions.csv", index=False)
    info = summary(table, point)
    (out / "summary.json").write_text(json.dumps(info, indent=2))
    print(
        f"feclip predict: {info['n_flagged']}/{info['n_files']} flagged at {point}, "
        f"{info['n_unreadable']} unreadable, {info['n_shape_mismatch']} of another shape; "
        f"written to {out / 'predictions.csv'}"
    )
    if out != output_dir:
        tracker.log_artifacts(out)
    return {k: float(v) for k, v in info.items() if k.startswith("n_")}
