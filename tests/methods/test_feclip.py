"""FE-CLIP as a method: only the adapters and fc train, they learn, and few-shot maps are added by the paper's
rule."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import compose, feclip_model, hdmap_set

from feclip.jobs.run import main
from feclip.methods.feclip.method import add_fewshot
from feclip.methods.feclip.train import TrainConfig, TrainingDiverged, train
from feclip.model.feclip import FEClipOutput
from feclip.runtime import Runtime
from feclip.tracking import JobInfo

CPU = Runtime(torch.device("cpu"))


def test_only_adapters_and_fc_change():
    model, data = feclip_model(), hdmap_set()
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    trainable = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    train(model, data, TrainConfig(epochs=1, batch_size=6), CPU, seed=0)
    assert all(torch.equal(v, model.backbone.state_dict()[k]) for k, v in frozen.items())
    assert all(not torch.equal(v, model.trainable_state_dict()[k]) for k, v in trainable.items())
    assert all(not p.requires_grad for p in model.backbone.parameters())


def _auroc_after(tmp_path: Path, epochs: int) -> dict:
    overrides = [
        f"data.root={tmp_path / 'hdmap'}",
        "data.synthetic.n_train=200",
        "data.synthetic.n_test=100",
        "eval.split.protocol=whole_test",  # the margins below were measured on every test image
        "domain=A",
        "tracking.enabled=false",
        f"cache_dir={tmp_path / 'cache'}",
        "eval.figures=false",
        f"train.epochs={epochs}",
        "model.score=cls+max_map",
        "train.lr=5e-3",
        "train.fc_lr_mult=1.0",
    ]
    cfg = compose(*overrides)
    main(cfg, tmp_path / f"out{epochs}", JobInfo("learn", "learn"))
    return json.loads((tmp_path / f"out{epochs}" / "metrics.json").read_text())["metrics"]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_on_synthetic_faults_beats_the_untrained_head(tmp_path):
    """Random-init tiny backbone: this shows the adapters learn, not that FE-CLIP works."""
    untrained, trained = _auroc_after(tmp_path, 0), _auroc_after(tmp_path, 6)
    assert trained["auroc"] > untrained["auroc"] + 0.04
    assert trained["pixel_auroc"] > untrained["pixel_auroc"] + 0.1


def test_fewshot_map_is_added_upsampled_and_its_grid_max_to_the_score():
    feclip_map, feclip_score = torch.ones(2, 4, 4), torch.tensor([0.5, 0.25])
    fewshot = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.2, 0.2], [0.2, 0.2]]])
    out = FEClipOutput(
        score=feclip_score, map=feclip_map, tap_scores=feclip_score[None], tap_maps=feclip_map[None]
    )
    score, amap = add_fewshot(out, fewshot, weight_map=2.0, weight_score=0.5)
    torch.testing.assert_close(score, torch.tensor([0.5 + 0.5 * 1.0, 0.25 + 0.5 * 0.2]))
    up = F.interpolate(fewshot[:, None], size=(4, 4), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(amap, 1 + 2 * up)
    torch.testing.assert_close(amap[1], torch.full((4, 4), 1.4))
    assert amap[0, 0, 3] == 1 + 2 * 1.0  # the corner nearest the hot cell keeps its value


def test_divergence_names_the_epoch_and_the_loss():
    model, data = feclip_model(), hdmap_set()
    with pytest.raises(
        TrainingDiverged, match=r"training diverged at epoch \d+/3, batch \d+/3: losses .*nan"
    ):
        train(model, data, TrainConfig(epochs=3, batch_size=4, lr=1e12), CPU, seed=0)
