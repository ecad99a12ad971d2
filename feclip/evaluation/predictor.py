"""Apply a saved model to unlabelled HDMAP TIFFs: scores, calibrated decisions, optional overlays.

A checkpoint directory is self-describing. The method writes its own part (`Method.save`: for FE-CLIP the
adapters + fc, the model description, the text features and a random-init backbone's weights); the job adds
`predictor.json` (the method name, the input transform, the calibration record, the native image shape, the
reference-bank settings, the deployable gate and the run's identity: domain, backbone, random init, and the
precision and device the calibration was scored at) and, for few-shot / condition-aware runs,
`references.safetensors` (the bank descriptors), so a model scores new files exactly as its run scored its
test images. `load_predictor` rebuilds all of it without the original Hydra config.

Statuses per file: `ok`; `shape_mismatch HxW` (scored, but not of the calibrated shape); `error: reason`
(unreadable, not scored); `error: non-finite score` (scored, but the score is NaN/inf: never a decision).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from feclip.condition.aware import ReferenceScorer
from feclip.condition.banks import ReferenceBank
from feclip.condition.gates import make_gate
from feclip.data.hdmap import list_tiffs, read_tiff
from feclip.data.transforms import HDMAPInput
from feclip.errors import FeclipError
from feclip.evaluation import calibration, plots
from feclip.files import atomic_folder
from feclip.methods.base import Method
from feclip.methods.registry import METHODS
from feclip.model.backbone import WEIGHT_SUFFIXES
from feclip.precision import resolve
from feclip.progress import progress
from feclip.runtime import Runtime, compute_identity

PREDICTOR_FILE = "predictor.json"
REFERENCES_FILE = "references.safetensors"
MANIFEST_FILE = "manifest.json"  # sha256 of every other file: an edited threshold or weight is refused
NONFINITE = "error: non-finite score"


class PredictError(FeclipError):
    """The input folder or the checkpoint cannot be used for prediction."""


@dataclass
class Predictor:
    method: Method
    to_input: nn.Module  # raw (B, H, W) -> model input (B, 3, h, w)
    record: dict[str, Any]  # calibration record (feclip.evaluation.calibration)
    gate: Any | None  # the deployable gate labelling files cold / warm, or None
    scorer: ReferenceScorer | None  # the run's reference banks with the deployable gate, or None
    image_shape: tuple[int, int]  # native (H, W) of the images the model was calibrated on


def save_predictor(
    directory: Path,
    method: Method,
    to_input: HDMAPInput,
    record: dict,
    references,
    image_shape,
    *,
    identity: dict,
) -> None:
    """Write the method's checkpoint, then what `load_predictor` needs beside it; `identity`: domain,
    backbone, pretrained, random_init, precision and device of the run (`checkpoint_identity`). The folder
    appears whole or not at all (a full disk or a kill leaves no partial checkpoint)."""
    with atomic_folder(directory) as tmp:
        method.save(tmp)
        content = {
            "method": method.name,
            "identity": {"method": method.name, **identity},
            "input": to_input.spec(),
            "calibration": record,
            "image_shape": list(image_shape),
            "references": None,
            "gate": None,
        }
        if references is not None:
            content["references"] = {"bank": references.scorer.bank.settings(), "state": references.state}
            content["gate"] = references.deployable.state()
            save_file(references.scorer.bank.tensors(), tmp / REFERENCES_FILE)
        (tmp / PREDICTOR_FILE).write_text(json.dumps(content, indent=2))
        manifest = {path.name: sha256(path) for path in sorted(tmp.iterdir()) if path.name != MANIFEST_FILE}
        (tmp / MANIFEST_FILE).write_text(json.dumps({"sha256": manifest}, indent=2))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(directory: Path) -> None:
    """Every file listed in the manifest is there, unchanged; a checkpoint without a manifest predates it."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        return
    for name, expected in json.loads(path.read_text())["sha256"].items():
        file = directory / name
        if not file.is_file() or sha256(file) != expected:
            state = "is missing" if not file.is_file() else "was changed after the run saved it"
            raise PredictError(
                f"{file} {state} (sha256 in {MANIFEST_FILE}); refusing to apply an edited model: expected "
                "the files as saved (retrain instead of editing thresholds, lam or weights by hand)"
            )


def _content(directory: Path) -> dict:
    if not (directory / PREDICTOR_FILE).is_file():
        raise PredictError(f"{directory} is not a feclip model directory: {PREDICTOR_FILE} is missing")
    return json.loads((directory / PREDICTOR_FILE).read_text())


def checkpoint_identity(directory: str | Path) -> dict[str, Any]:
    """method, domain, backbone, pretrained, random_init, precision, device of the run that saved the model
    (checkpoints older than the identity block: from the calibration record; precision 'unknown')."""
    content = _content(Path(directory))
    if "identity" in content:
        return content["identity"]
    context = content["calibration"].get("context", {})
    pretrained = context.get("pretrained")
    return {
        "method": content.get("method", "feclip"),
        "domain": context.get("domain", "unknown"),
        "backbone": context.get("backbone", "unknown"),
        "pretrained": pretrained,
        "random_init": pretrained is None,
        "precision": "unknown",
        "device": "unknown",
    }


def predict_precision(asked: str, device_type: str, calibrated: str, *, allow_change: bool) -> str:
    """The precision predict applies: the calibration's (for `auto`), or `asked` when it resolves to the same
    or `allow_change` (predict.allow_precision_change); another is refused: the stored thresholds hold only
    for scores computed as they were."""
    if asked == "auto":
        return resolve("auto" if calibrated == "unknown" else calibrated, device_type)
    chosen = resolve(asked, device_type)
    if calibrated not in ("unknown", chosen) and not allow_change:
        raise PredictError(
            f"precision={asked}: the model was calibrated at {calibrated} and its thresholds hold for scores "
            f"computed so; drop the override (predict applies {calibrated}) or set "
            "predict.allow_precision_change=true"
        )
    return chosen


def predict_identity(cfg) -> dict[str, Any]:
    """The saved model's identity (`checkpoint_identity`) with the device and precision predict runs at;
    `calibrated_precision` keeps the one the model was calibrated at."""
    identity = checkpoint_identity(cfg.model.checkpoint)
    device, _ = compute_identity(cfg)
    calibrated = identity.get("precision", "unknown")
    allow = cfg.predict.allow_precision_change
    chosen = predict_precision(cfg.precision, device, calibrated, allow_change=allow)
    return {**identity, "device": device, "precision": chosen, "calibrated_precision": calibrated}


def _check_weights_file(directory: Path, recorded, weights: str | None) -> None:
    """A model saved with a local weights file needs that file: where it was, or where `weights` says."""
    if weights is not None:
        if not Path(weights).is_file():
            raise PredictError(f"predict.backbone_weights={weights}: no such file; expected a weights file")
        return
    is_path = isinstance(recorded, str) and ("/" in recorded or recorded.endswith(WEIGHT_SUFFIXES))
    if is_path and not Path(recorded).is_file():
        raise PredictError(
            f"{directory}: the backbone weights file {recorded} the model was saved with is gone; pass its "
            "new place with predict.backbone_weights=/path/to/file (checked against the saved fingerprint)"
        )


def load_predictor(directory: str | Path, device: torch.device, *, weights: str | None = None) -> Predictor:
    """Rebuild method, input transform, calibration, banks and gate from a checkpoint directory; `weights`:
    where the backbone weights file is now (None: where the run found it)."""
    directory = Path(directory)
    content = _content(directory)
    verify(directory)
    _check_weights_file(directory, checkpoint_identity(directory)["pretrained"], weights)
    entry = METHODS.get_entry(content.get("method", "feclip"), key="method")
    method = entry.load(directory, weights=weights).to(device)
    method.model.eval()
    mean, std = method.input_stats()
    spec = {"mean": mean, "std": std, **{k: v for k, v in content["input"].items() if k != "pretrained"}}
    gate = make_gate(**content["gate"]) if content.get("gate") else None
    if gate is not None and gate.needs_labels:
        raise PredictError(
            f"{directory / PREDICTOR_FILE}: gate {gate.name!r} needs labels (the test file index) and cannot "
            "route unlabelled files; expected a deployable gate (p90, clip_sim, ...)"
        )
    scorer = None
    if content.get("references"):
        tensors = load_file(directory / REFERENCES_FILE, device=str(device))  # beside the model's outputs
        bank = ReferenceBank.from_saved(content["references"]["bank"], tensors)
        scorer = ReferenceScorer(method, bank, gate, raw=None, meta=None)
    return Predictor(
        method, HDMAPInput(**spec), content["calibration"], gate, scorer, tuple(content["image_shape"])
    )


def list_inputs(pattern: str) -> list[Path]:
    """TIFF entries (.tif/.tiff, any case) of a folder (sorted; the other entries named in one note) or the
    matches of a glob; none found is an error. An entry that cannot be read (a dangling symlink) stays
    listed: its row in predictions.csv says why it was not scored."""
    path = Path(pattern)
    if path.is_dir():
        files = list_tiffs(path)
    else:
        files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise PredictError(f"no TIFF files at {pattern}: expected a folder of *.tiff files or a glob pattern")
    return files


def _status(shape: tuple[int, ...], expected: tuple[int, int]) -> str:
    """ok, or `shape_mismatch HxW` (still scored) for an image of another shape than the calibrated one."""
    return "ok" if tuple(shape) == tuple(expected) else f"shape_mismatch {shape[0]}x{shape[1]}"


def _read(path: Path, shape: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """(image or None, status): ok | shape_mismatch HxW (still scored) | error: reason."""
    try:
        image = read_tiff(path)
    except (ValueError, OSError) as error:
        return None, f"error: {error}"
    return image, _status(image.shape, shape)


@torch.inference_mode()
def _score(predictor: Predictor, images: list[np.ndarray], rt: Runtime) -> dict[str, Any]:
    """Scores, map maxima, native-size maps and gate decisions of same-shape images."""
    raw = torch.from_numpy(np.stack(images)).to(rt.device)
    with rt.policy():
        out = predictor.method.forward(predictor.to_input(raw))
    columns = {}
    if predictor.scorer is not None:
        score, amap, columns = predictor.scorer.score_batch(out, raw, meta=None)
    else:
        score, amap = out.score.float(), out.map.float()
        if predictor.gate is not None:
            embedding = None if out.embedding is None else out.embedding.float()
            columns = predictor.gate.decide(raw, embedding, None).columns()
    maps = F.interpolate(amap.float()[:, None], size=raw.shape[-2:], mode="bilinear")[:, 0]
    return {
        "score": score.float().cpu().numpy(),
        "map_max": amap.float().flatten(1).amax(1).cpu().numpy(),
        "map": maps.cpu().numpy(),
        "gate": columns.get("gate"),
    }


def _row(key: dict, status: str, score: float, map_max: float, threshold: float, record: dict) -> dict:
    """One image's result (`key`: {path or index: value}); a non-finite score is an error, no decision."""
    row = {**key, "status": status, "score": score, "map_max": map_max}
    if not math.isfinite(score):
        return {**row, "status": NONFINITE}
    row["decision"] = "fault" if score > threshold else "normal"
    row["zscore"] = float(calibration.zscore(np.array([score]), record)[0])
    return row


Read = tuple[Any, "np.ndarray | None", str]  # (path or index, the image (H, W) or None, status)
Flagged = Callable[[Any, np.ndarray, np.ndarray], None]  # (path or index, image (H, W), map (H, W))


def _ignore(key: Any, image: np.ndarray, amap: np.ndarray) -> None:
    """The default `on_flagged`: nothing."""


def _predict(
    predictor: Predictor,
    inputs: Sequence[Any],
    reader: Callable[[Any], Read],
    rt: Runtime,
    *,
    column: str,
    operating_point: str,
    on_flagged: Flagged = _ignore,
) -> pd.DataFrame:
    """One row per input, in input order: `column` (path | index), status, score, map_max, decision, zscore
    (and gate). `reader` reads an input batch by batch; the images of one batch and shape are scored
    together, unreadable ones keep their status."""
    calibration.threshold(predictor.record, operating_point)  # an unknown operating point fails here
    routed = predictor.record.get("condition_from") == "gate"  # per-condition thresholds follow the gate
    rows, order = [], []
    for start in progress(range(0, len(inputs), rt.batch_size), "predict", unit="batch"):
        read = [reader(item) for item in inputs[start : start + rt.batch_size]]
        order += [key for key, _, _ in read]
        for shape in {image.shape for _, image, _ in read if image is not None}:
            group = [
                (key, image, status)
                for key, image, status in read
                if image is not None and image.shape == shape
            ]
            result = _score(predictor, [image for _, image, _ in group], rt)
            for j, (key, image, status) in enumerate(group):
                score, map_max = float(result["score"][j]), float(result["map_max"][j])
                condition = str(result["gate"][j]) if routed else None
                threshold = calibration.threshold(predictor.record, operating_point, condition=condition)
                row = _row({column: key}, status, score, map_max, threshold, predictor.record)
                if result["gate"] is not None:
                    row["gate"] = str(result["gate"][j])
                if row.get("decision") == "fault":
                    on_flagged(key, image, result["map"][j])
                rows.append(row)
        rows += [{column: key, "status": status} for key, image, status in read if image is None]
    table = pd.DataFrame(rows, columns=list(dict.fromkeys([column, "status", *(k for r in rows for k in r)])))
    position = {key: i for i, key in enumerate(order)}
    return table.sort_values(column, key=lambda keys: keys.map(position)).reset_index(drop=True)


def predict_files(
    predictor: Predictor,
    files: list[Path],
    rt: Runtime,
    *,
    operating_point: str,
    on_flagged: Flagged = _ignore,
) -> pd.DataFrame:
    """One row per file: path, status, score, map_max, decision, zscore (and gate); streamed in batches."""
    table = _predict(
        predictor,
        files,
        lambda path: (path, *_read(path, predictor.image_shape)),
        rt,
        column="path",
        operating_point=operating_point,
        on_flagged=on_flagged,
    )
    return table.assign(path=table["path"].map(str))


def _array_read(index: int, image: np.ndarray, shape: tuple[int, int]) -> Read:
    """An in-memory map as `_read` gives a file: non-finite pixels are an error status, not a score."""
    bad = int((~np.isfinite(image)).sum())
    if bad:
        return index, None, f"error: {bad} non-finite pixel values (NaN/inf); expected finite floats"
    return index, image, _status(image.shape, shape)


def predict_arrays(
    predictor: Predictor, images: Sequence[np.ndarray], rt: Runtime, *, operating_point: str
) -> pd.DataFrame:
    """One row per map of `images` (each (H, W), in the units of the HDMAP TIFFs): index (its position),
    status, score, map_max, decision, zscore (and gate), as `predict_files` gives for files."""
    maps = [np.asarray(image, dtype=np.float32) for image in images]
    wrong = next((m.shape for m in maps if m.ndim != 2), None)
    if wrong is not None:
        raise PredictError(f"a map of shape {wrong}: expected (N, H, W) maps or a list of (H, W) maps")
    return _predict(
        predictor,
        list(enumerate(maps)),
        lambda item: _array_read(*item, predictor.image_shape),
        rt,
        column="index",
        operating_point=operating_point,
    )


def summary(table: pd.DataFrame, operating_point: str) -> dict[str, Any]:
    """Counts for the log and MLflow: files, ok, flagged, errors (with the first paths), shape mismatches."""
    errors = table[table["status"].str.startswith("error")]
    decision = table["decision"] if "decision" in table else pd.Series(dtype=object)
    return {
        "n_files": len(table),
        "n_scored": int(decision.notna().sum()),
        "n_flagged": int((decision == "fault").sum()),
        "n_errors": len(errors),
        "n_nonfinite": int((table["status"] == NONFINITE).sum()),
        "first_errors": errors["path"].head(5).tolist(),
        "n_shape_mismatch": int(table["status"].str.startswith("shape_mismatch").sum()),
        "operating_point": operating_point,
    }


def overlay_writer(directory: Path, files: list[Path]) -> Callable[[Path, np.ndarray, np.ndarray], None]:
    """on_flagged callback writing one PNG per flagged file under `directory`: the image and its anomaly map.

    Names are unique: the file name with its suffix (`dup.tif.png`, `dup.tiff.png`), and files of the same
    name from different folders get the folder's position in `files` appended."""
    directory.mkdir(parents=True, exist_ok=True)
    names = _unique_names(files)

    def write(path: Path, image: np.ndarray, amap: np.ndarray) -> None:
        example = plots.MapExample(image, amap, column=0, row=0, title=path.name)
        figure = plots.map_panel([example], [f"flagged: {path.name}"], n_rows=1)
        figure.savefig(directory / names[str(path)], dpi=110)

    return write


def _unique_names(files: list[Path]) -> dict[str, str]:
    names, seen = {}, {}
    for path in files:
        count = seen.get(path.name, 0)
        seen[path.name] = count + 1
        names[str(path)] = f"{path.name}.png" if count == 0 else f"{path.name}.{count}.png"
    return names
