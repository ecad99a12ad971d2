"""Checkpoints of the trainable FE-CLIP state (adapters + fc) with a JSON description; no pickles.

A checkpoint directory holds
- `trainable.safetensors`: the adapters' and fc's tensors (the frozen backbone is never saved here);
- `model.json`: the description (backbone name, pretrained, width, embed_dim, num_blocks, resolved taps, the
  FEClipConfig, the input size) and the caller's `extra` dict (JSON values);
- `extra.safetensors`: top-level tensor values of `extra`, when there are any.
Loading checks the description against the model first and fails with a one-line CheckpointError naming the
differences (backbone, width, taps, input size, or an adapter option of the config), model vs checkpoint.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from feclip.errors import FeclipError
from feclip.files import atomic_path, write_text
from feclip.model.feclip import FEClip, FEClipConfig

FORMAT = "feclip-checkpoint/2"
FORMAT_V1 = "feclip-checkpoint/1"  # flat FEClipConfig (freq, ffe, ffe_window, lfs_*, ...); still read
WEIGHTS_FILE = "trainable.safetensors"
DESCRIPTION_FILE = "model.json"
EXTRA_TENSORS_FILE = "extra.safetensors"
# FEClipConfig fields that define what the trainable tensors mean; the head's read-out options may differ.
ADAPTER_FIELDS = ("adapters", "lam", "freq", "fc_bias")
V1_FREQ_KEYS = {  # format 1 key -> (format 2 path in FEClipConfig)
    "freq": ("freq", "transform"),
    "conv_adapter": ("freq", "conv_adapter"),
    "ffe": ("freq", "ffe", "enabled"),
    "ffe_window": ("freq", "ffe", "window"),
    "lfs": ("freq", "lfs", "enabled"),
    "lfs_window": ("freq", "lfs", "window"),
    "lfs_statistic": ("freq", "lfs", "statistic"),
    "lfs_kernel": ("freq", "lfs", "kernel"),
}


class CheckpointError(FeclipError):
    """A checkpoint directory is unreadable or does not match the model it is loaded into."""


def describe(model: FEClip, input_size=None) -> dict[str, Any]:
    """The JSON description of `model` (input_size defaults to the size the model was first run at)."""
    size = input_size if input_size is not None else model.input_size
    backbone = model.backbone
    return {
        "format": FORMAT,
        "backbone": backbone.model_name,
        "pretrained": backbone.pretrained,
        "activation": backbone.activation,
        "width": backbone.width,
        "embed_dim": backbone.embed_dim,
        "num_blocks": backbone.num_blocks,
        "backbone_weights": backbone.fingerprint,
        "taps": list(model.taps),
        "config": json.loads(json.dumps(model.cfg.to_dict())),
        "input_size": None if size is None else [int(v) for v in size],
    }


def _json_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def save_checkpoint(directory, model: FEClip, extra: dict | None = None, input_size=None) -> Path:
    """Write the trainable state, the description and `extra` (JSON values, top-level tensors), each file
    atomically, the description last."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    extra = dict(extra or {})
    tensors = {k: v.detach().cpu().contiguous() for k, v in extra.items() if isinstance(v, torch.Tensor)}
    description = describe(model, input_size)
    description["extra"] = {k: v for k, v in extra.items() if k not in tensors}
    try:
        text = json.dumps(description, indent=2, default=_json_value)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint {directory}: extra is not JSON-serialisable ({error})") from error
    state = {k: v.cpu().contiguous() for k, v in model.trainable_state_dict().items()}
    save_tensors(state, directory / WEIGHTS_FILE)
    if tensors:
        save_tensors(tensors, directory / EXTRA_TENSORS_FILE)
    write_text(directory / DESCRIPTION_FILE, text)  # last: a folder without it is no checkpoint
    return directory


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file written atomically; a full disk is an `OSError` naming `path`."""
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"format": FORMAT})


def read_description(directory) -> dict[str, Any]:
    """A checkpoint's description: backbone, pretrained, width, taps, config, input_size, extra."""
    path = Path(directory) / DESCRIPTION_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a feclip checkpoint directory (no {DESCRIPTION_FILE})")
    try:
        description = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable checkpoint description ({error})") from error
    if not isinstance(description, dict) or description.get("format") not in (FORMAT, FORMAT_V1):
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise CheckpointError(f"{path}: format {found!r}, expected {FORMAT!r} (or {FORMAT_V1!r})")
    if description["format"] == FORMAT_V1:
        description = {**description, "format": FORMAT, "config": config_from_v1(description["config"])}
    return description


def config_from_v1(config: dict) -> dict:
    """A format-1 (flat) FEClipConfig dict as the format-2 nested one."""
    nested: dict = {k: v for k, v in config.items() if k not in V1_FREQ_KEYS}
    nested.update(fc_init="clip_projection", fc_bias=False)  # format 1 had only this fc
    for key, path in V1_FREQ_KEYS.items():
        if key in config:
            node = nested
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = config[key]
    return nested


def _differences(model: FEClip, description: dict, input_size) -> list[tuple[str, Any, Any]]:
    """(name, model value, checkpoint value) for each mismatch, in a fixed order."""
    backbone = model.backbone
    size = input_size if input_size is not None else model.input_size
    pairs = [
        ("backbone", backbone.model_name, description["backbone"]),
        ("width", backbone.width, description["width"]),
        ("taps", list(model.taps), description["taps"]),
    ]
    if size is not None and description["input_size"] is not None:
        pairs.append(("input size", [int(v) for v in size], description["input_size"]))
    try:
        saved = FEClipConfig(**description["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"checkpoint config {description['config']!r} is invalid ({error})") from error
    ours, theirs = _flat(model.cfg.to_dict()), _flat(saved.to_dict())
    pairs += [
        (f"config.{key}", ours[key], theirs[key]) for key in ours if key.split(".")[0] in ADAPTER_FIELDS
    ]
    return [(name, ours, theirs) for name, ours, theirs in pairs if ours != theirs]


def _flat(config: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config dict -> {dotted key: value} (lists and tuples compared as lists)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def identity_differences(model: FEClip, description: dict, extra: dict) -> list[str]:
    """What the trained adapters were trained with but `model` lacks: the backbone weights (fingerprint), the
    temperature tau, the text features (the prompt set); checkpoints of format 1 record none of them."""
    found = []
    weights = description.get("backbone_weights")
    if weights is not None and weights != model.backbone.fingerprint:
        found.append(f"backbone weights: model {model.backbone.fingerprint}, checkpoint {weights}")
    tau = description["config"].get("temperature")
    if tau is not None and tau != model.cfg.temperature:
        found.append(f"temperature: model {model.cfg.temperature}, checkpoint {tau}")
    text = extra.get("text_features")
    if isinstance(text, torch.Tensor) and not torch.allclose(
        text.float(), model.text_features.cpu(), atol=1e-6
    ):
        found.append("text features: the model's prompt set is not the checkpoint's")
    return found


def load_checkpoint(directory, model: FEClip, input_size=None, *, strict: bool = True) -> dict[str, Any]:
    """Load the trainable state of `directory` into `model` after checking the description; returns `extra`.

    input_size: the (h, w) the model will run at; checked against the saved one when both are known
    (defaults to `model.input_size`). A model without a recorded size takes the checkpoint's.
    Structural differences (backbone, width, taps, input size, adapter options) are always refused.
    Identity differences (backbone weights, tau, text features: `identity_differences`) are refused too
    unless `strict=False` (an intended transfer, e.g. adapters onto another tag); then they are listed in
    `extra["transfer"]` and warned about.
    """
    directory = Path(directory)
    description = read_description(directory)
    differences = _differences(model, description, input_size)
    if differences:
        found = "; ".join(
            f"{name}: model has {ours!r}, checkpoint has {theirs!r}" for name, ours, theirs in differences
        )
        raise CheckpointError(f"checkpoint {directory} does not match the model: {found}")
    extra = read_extra(directory, description)
    transfer = identity_differences(model, description, extra)
    if transfer and strict:
        raise CheckpointError(
            f"checkpoint {directory} was trained on another setup: {'; '.join(transfer)}; "
            "expected the same backbone weights, tau and prompts (or model.checkpoint_strict=false)"
        )
    if transfer:
        warnings.warn(f"checkpoint {directory} transferred: {'; '.join(transfer)}", stacklevel=2)
    if not (directory / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"checkpoint {directory}: {WEIGHTS_FILE} is missing")
    state = load_file(directory / WEIGHTS_FILE)
    expected = model.trainable_state_dict()
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise CheckpointError(f"checkpoint {directory}: tensors missing {missing}, unexpected {unexpected}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"checkpoint {directory}: {name} has shape {tuple(tensor.shape)}, "
                f"model {tuple(expected[name].shape)}"
            )
    model.load_state_dict(state, strict=False)
    if model.input_size is None and description["input_size"] is not None:
        model.input_size = tuple(description["input_size"])
    return {**extra, "transfer": transfer} if transfer else extra


def read_extra(directory, description: dict | None = None) -> dict[str, Any]:
    """The `extra` dict saved with a checkpoint: its JSON values and its top-level tensors."""
    directory = Path(directory)
    extra = dict((description or read_description(directory)).get("extra", {}))
    if (directory / EXTRA_TENSORS_FILE).is_file():
        extra.update(load_file(directory / EXTRA_TENSORS_FILE))
    return extra
