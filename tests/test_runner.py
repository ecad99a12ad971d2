"""The job's building blocks: training sources, validation slice, the plain-CLIP baseline, device checks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from feclip import runner
from feclip.config import ConfigError
from feclip.data import synthetic
from feclip.data.hdmap import load_domain

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return synthetic.ensure(tmp_path_factory.mktemp("hdmap") / "hdmap", n_train=20, n_test=20, seed=0)


def _cfg(root: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            config_name="config",
            overrides=[
                f"data.root={root}",
                "data.synthetic.n_train=20",
                "data.synthetic.n_test=20",
                *overrides,
            ],
        )


def test_validation_slice_is_disjoint_and_seeded(root):
    train = load_domain(root, "C", splits=("train",))
    fit, val = runner.split_validation(train, 0.1, seed=0)
    assert len(val) == 2 and len(fit) == 18
    assert not set(fit.meta["path"]) & set(val.meta["path"])
    assert runner.split_validation(train, 0.1, seed=0)[1].meta["path"].tolist() == val.meta["path"].tolist()


def test_synthetic_fault_source_is_balanced_with_masks(root):
    cfg = _cfg(root, "aux.faults_per_normal=1.0")
    fit = load_domain(root, "C", splits=("train",))
    data = runner.training_set(cfg, root, fit, runner.hdmap_input(runner.input_spec(cfg), _backbone_stats()))
    assert len(data) == 40 and data.labels.sum() == 20 and bool(data.has_mask.all())
    assert data.masks[:20].sum() == 0 and bool((data.masks[20:].flatten(1).sum(1) > 0).all())
    assert torch.equal(data.images[:20], fit.images)  # clean normals are the fit images, untouched


def test_other_domains_source_has_labels_but_no_masks(root):
    cfg = _cfg(root, "aux=hdmap_other_domains", "domain=B")
    fit = load_domain(root, "B", splits=("train",))
    data = runner.training_set(cfg, root, fit, runner.hdmap_input(runner.input_spec(cfg), _backbone_stats()))
    assert len(data) == 3 * 40 and data.masks is None and not bool(data.has_mask.any())
    assert data.labels.float().mean() == 0.5


def test_no_training_source_without_checkpoint_is_the_plain_clip_baseline(root):
    cfg = _cfg(root, "aux=none")
    assert runner.training_set(cfg, root, None, None) is None
    assert runner.model_config(cfg).adapters is False
    assert runner.model_config(_cfg(root)).adapters is True


def test_config_maps_onto_the_model_options(root):
    cfg = runner.model_config(_cfg(root, "freq=horizontal", "model.taps=[1,3]", "model.lam=0.3"))
    assert cfg.ffe_window == (1, 3) and cfg.lfs_window == (1, 5) and cfg.taps == [1, 3] and cfg.lam == 0.3


def test_cuda_request_without_a_gpu_is_a_config_error(root, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="device=cuda"):
        runner.runtime(_cfg(root, "device=cuda"))
    assert runner.runtime(_cfg(root)).device.type == "cpu"


def test_worst_misses_come_first():
    scores, labels = np.array([0.9, 0.1, 0.6, 0.4]), np.array([0, 1, 1, 0])
    assert runner._worst_misses(scores, labels, threshold=0.5, n=2).tolist() == [0, 1]


def _backbone_stats():
    class Stats:
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    return Stats()
