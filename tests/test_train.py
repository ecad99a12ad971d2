"""Training: the frozen-token cache is bit-identical, the backbone never changes, the adapters learn."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from feclip.cache import cache_key, pre_tap_tokens
from feclip.data.sets import labelled_set
from feclip.data.transforms import HDMAPInput
from feclip.model.backbone import ClipBackbone
from feclip.model.feclip import FEClip, FEClipConfig
from feclip.runner import main
from feclip.tracking import JobInfo
from feclip.train import TrainConfig, train

CONF = Path(__file__).resolve().parents[1] / "conf"
NULL = torch.autocast("cpu", enabled=False)


def _model(seed: int = 0) -> FEClip:
    torch.manual_seed(seed)
    backbone = ClipBackbone("feclip-tiny", None)
    text = torch.nn.functional.normalize(torch.randn(2, backbone.embed_dim), dim=-1)
    return FEClip(backbone, FEClipConfig(taps=[1, 3]), text)


def _data(n: int = 12):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(n, 31, 95, generator=generator) * 1.5
    masks = (torch.rand(n, 31, 95, generator=generator) > 0.95).to(torch.uint8)
    labels = (torch.arange(n) % 2).tolist()
    return labelled_set(images, labels, HDMAPInput((64, 192)), masks * torch.tensor(labels)[:, None, None])


def test_training_with_cached_tokens_is_bit_identical(tmp_path):
    data, cfg = _data(), TrainConfig(epochs=2, batch_size=4)
    results = []
    for mode in ("off", "memory", "disk"):
        model = _model()
        tokens = pre_tap_tokens(model, data, mode, 5, torch.device("cpu"), NULL, "fp32", tmp_path)
        history = train(model, data, cfg, torch.device("cpu"), NULL, seed=3, tokens=tokens)
        results.append((history, model.trainable_state_dict()))
    for history, state in results[1:]:
        assert history == results[0][0]
        for name, value in state.items():
            assert torch.equal(value, results[0][1][name]), name
    assert len(list(tmp_path.glob("tokens-*.pt"))) == 1


def test_cache_key_changes_with_images_transform_taps_and_weights():
    model, data = _model(), _data()
    key = cache_key(model, data, "fp32")
    other_images = labelled_set(data.images + 1e-3, data.labels, data.to_input)
    other_input = labelled_set(data.images, data.labels, HDMAPInput((64, 192), resize="nearest"))
    assert cache_key(model, other_images, "fp32") != key
    assert cache_key(model, other_input, "fp32") != key
    assert cache_key(model, data, "bf16") != key
    assert cache_key(_model(seed=1), data, "fp32") != key
    moved = _model()
    moved.taps = [2, 3]
    assert cache_key(moved, data, "fp32") != key


def test_only_adapters_and_fc_change():
    model, data = _model(), _data()
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    train(model, data, TrainConfig(epochs=1, batch_size=6), torch.device("cpu"), NULL, seed=0)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in frozen.items())
    assert all(not torch.equal(v, model.trainable_state_dict()[k]) for k, v in trainable.items())
    assert all(not p.requires_grad for p in model.backbone.parameters())


def _auroc_after(tmp_path: Path, epochs: int) -> dict:
    overrides = [
        f"data.root={tmp_path / 'hdmap'}",
        "data.synthetic.n_train=200",
        "data.synthetic.n_test=100",
        "domain=A",
        "tracking.enabled=false",
        f"cache_dir={tmp_path / 'cache'}",
        "eval.figures=false",
        f"train.epochs={epochs}",
        "model.score=cls+max_map",
        "train.lr=5e-3",
        "train.fc_lr_mult=1.0",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    main(cfg, tmp_path / f"out{epochs}", JobInfo("learn", "learn"))
    return json.loads((tmp_path / f"out{epochs}" / "metrics.json").read_text())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_on_synthetic_faults_beats_the_untrained_head(tmp_path):
    """Random-init tiny backbone: this shows the adapters learn, not that FE-CLIP works."""
    untrained, trained = _auroc_after(tmp_path, 0), _auroc_after(tmp_path, 6)
    assert trained["auroc"] > untrained["auroc"] + 0.04
    assert trained["pixel_auroc"] > untrained["pixel_auroc"] + 0.1
