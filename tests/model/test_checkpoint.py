"""Checkpoints: exact round trip of the trainable state, description, extra, and each mismatch error."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from feclip.model.backbone import ClipBackbone
from feclip.model.checkpoint import (
    DESCRIPTION_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    config_from_v1,
    load_checkpoint,
    read_description,
    save_checkpoint,
)
from feclip.model.feclip import FEClip, FEClipConfig


def make(backbone, seed, **options):
    torch.manual_seed(seed)
    return FEClip(backbone, FEClipConfig(**config_from_v1({"lam": 0.5, **options})), torch.randn(2, 32))


@pytest.fixture()
def saved(backbone, tmp_path):
    """A model with non-initial fc (perturbed) saved after running at 112 x 336."""
    net = make(backbone, 1)
    with torch.no_grad():
        net.fc.weight.add_(0.1 * torch.randn_like(net.fc.weight))
        net(torch.randn(1, 3, 112, 336))
    save_checkpoint(
        tmp_path / "ckpt", net, extra={"calibration": {"p99": np.float64(0.5)}, "bank": torch.ones(2, 3)}
    )
    return net, tmp_path / "ckpt"


def test_round_trip_reproduces_outputs_exactly(backbone, saved):
    net, directory = saved
    other = make(backbone, 2)
    other.text_features.copy_(net.text_features)
    extra = load_checkpoint(directory, other)
    images = torch.randn(2, 3, 112, 336)
    with torch.no_grad():
        a, b = net(images), other(images)
    assert torch.equal(a.map, b.map) and torch.equal(a.score, b.score)
    assert extra["calibration"] == {"p99": 0.5} and torch.equal(extra["bank"], torch.ones(2, 3))
    assert other.input_size == (112, 336)


def test_only_the_trainable_state_is_saved(saved):
    net, directory = saved
    keys = set(load_file(directory / WEIGHTS_FILE))
    assert keys == set(net.trainable_state_dict()) and all(k.startswith(("adapters.", "fc.")) for k in keys)
    description = read_description(directory)
    assert description["backbone"] == "feclip-tiny" and description["pretrained"] is None
    assert description["width"] == 64 and description["taps"] == [0, 1, 2, 3]
    assert description["input_size"] == [112, 336] and description["config"]["freq"]["lfs"]["window"] == [
        3,
        3,
    ]
    assert FEClipConfig(**description["config"]) == net.cfg


def edit_description(directory, **changes):
    path = directory / DESCRIPTION_FILE
    description = json.loads(path.read_text())
    description.update(changes)
    path.write_text(json.dumps(description))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"backbone": "ViT-L-14-336"}, "backbone: model has 'feclip-tiny', checkpoint has 'ViT-L-14-336'"),
        ({"width": 1024}, "width: model has 64, checkpoint has 1024"),
    ],
)
def test_description_mismatch_raises(backbone, saved, edit, message):
    _, directory = saved
    edit_description(directory, **edit)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(directory, make(backbone, 2))


def test_taps_mismatch_raises(backbone, saved):
    with pytest.raises(CheckpointError, match=r"taps: model has \[1, 3\], checkpoint has \[0, 1, 2, 3\]"):
        load_checkpoint(saved[1], make(backbone, 2, taps=[1, 3]))


def test_input_size_mismatch_raises(backbone, saved):
    with pytest.raises(
        CheckpointError, match=r"input size: model has \[224, 224\], checkpoint has \[112, 336\]"
    ):
        load_checkpoint(saved[1], make(backbone, 2), input_size=(224, 224))


def test_adapter_option_mismatch_raises(backbone, saved):
    with pytest.raises(
        CheckpointError, match="config.freq.lfs.statistic: model has 'abs', checkpoint has 'mean'"
    ):
        load_checkpoint(saved[1], make(backbone, 2, lfs_statistic="abs"))


def test_read_out_options_may_differ(backbone, saved):
    load_checkpoint(saved[1], make(backbone, 2, score="cls+max_map", smoothing_sigma=1.0))


def test_not_a_checkpoint_and_bad_extra_raise(backbone, tmp_path):
    with pytest.raises(CheckpointError, match="is not a feclip checkpoint directory"):
        load_checkpoint(tmp_path, make(backbone, 2))
    with pytest.raises(CheckpointError, match="extra is not JSON-serialisable"):
        save_checkpoint(tmp_path / "bad", make(backbone, 2), extra={"object": object()})


def test_plain_clip_round_trip(backbone, tmp_path):
    net = make(backbone, 1, adapters=False)
    save_checkpoint(tmp_path / "plain", net, input_size=(224, 224))
    assert load_checkpoint(tmp_path / "plain", make(backbone, 2, adapters=False)) == {}


def test_a_format_1_checkpoint_still_loads_and_reproduces_its_outputs():
    """tests/model/fixtures/checkpoint_v1 was written by feclip 0.1.0 (flat config, format 1) from a tiny
    backbone seeded 0, with its outputs on a seeded 224 x 224 input stored beside it."""
    fixture = Path(__file__).parent / "fixtures" / "checkpoint_v1"
    expected = json.loads((fixture / "expected.json").read_text())
    description = read_description(fixture)
    assert description["config"]["freq"] == {
        "transform": "dct",
        "conv_adapter": False,
        "ffe": {"enabled": True, "window": [1, 3]},
        "lfs": {"enabled": True, "window": [3, 3], "statistic": "abs", "kernel": 1},
    }
    torch.manual_seed(0)
    backbone = ClipBackbone("feclip-tiny")
    net = FEClip(backbone, FEClipConfig(**description["config"]), torch.tensor(expected["text_features"]))
    assert load_checkpoint(fixture, net)["note"].startswith("written by feclip 0.1.0")
    torch.manual_seed(3)
    with torch.no_grad():
        out = net.eval()(torch.randn(2, 3, 224, 224))  # the native size: no positional interpolation
    torch.testing.assert_close(out.score, torch.tensor(expected["score"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.map.amax((1, 2)), torch.tensor(expected["map_max"]), rtol=1e-5, atol=1e-6)


def test_identity_differences_are_refused_unless_not_strict(backbone, tmp_path):
    net = make(backbone, 1)
    save_checkpoint(tmp_path / "ckpt", net, extra={"text_features": net.text_features})
    other_text = make(backbone, 2)  # same backbone, other (random) text features
    with pytest.raises(CheckpointError, match="trained on another setup: text features"):
        load_checkpoint(tmp_path / "ckpt", other_text)
    transfer = load_checkpoint(tmp_path / "ckpt", other_text, strict=False)["transfer"]
    assert transfer == ["text features: the model's prompt set is not the checkpoint's"]
    torch.manual_seed(7)
    other_weights = FEClip(ClipBackbone("feclip-tiny"), net.cfg, net.text_features)
    with pytest.raises(
        CheckpointError, match=f"backbone weights: model {other_weights.backbone.fingerprint}"
    ):
        load_checkpoint(tmp_path / "ckpt", other_weights)
    hotter = FEClip(backbone, FEClipConfig(**{**net.cfg.to_dict(), "temperature": 0.01}), net.text_features)
    with pytest.raises(CheckpointError, match="temperature: model 0.01, checkpoint 0.07"):
        load_checkpoint(tmp_path / "ckpt", hotter)
    assert "transfer" not in load_checkpoint(tmp_path / "ckpt", make(backbone, 1))
