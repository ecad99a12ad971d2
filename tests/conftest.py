"""Test-wide settings (one torch thread on 2 shared cores, offline hub, deterministic seeds) and the shared
fixtures: the tiny random-init backbone and a small synthetic HDMAP root (both built once per session)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def backbone():
    """The tiny random-init ViT (feclip-tiny), seeded; frozen, so tests share it."""
    from feclip.model.backbone import ClipBackbone

    torch.manual_seed(0)
    return ClipBackbone("feclip-tiny")


@pytest.fixture(scope="session")
def small_root(tmp_path_factory):
    """A synthetic HDMAP root of 20 train + 20 + 20 test images per domain."""
    from feclip.data import synthetic

    return synthetic.ensure(tmp_path_factory.mktemp("hdmap") / "hdmap", n_train=20, n_test=20, seed=0)
