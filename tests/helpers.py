"""Shared test helpers: compose the project's Hydra config (`feclip.api.compose`), overrides for a tiny
synthetic HDMAP set, real faults of the file system (a full disk, an immutable folder)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from feclip import CONF_DIR
from feclip.api import compose  # noqa: F401  (the tests import it from here)
from feclip.data.sets import ImageSet, labelled_set
from feclip.data.transforms import HDMAPInput
from feclip.model.backbone import ClipBackbone
from feclip.model.feclip import FEClip, FEClipConfig
from feclip.tracking.local import read_history

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR  # feclip/conf
SMALL_SPLIT = 10  # the cold/warm split of the conftest `small_root` (20 test images per class)


def small_data(tmp: Path, n: int = 40) -> list[str]:
    """Overrides for a tiny synthetic HDMAP set (n train, n + n test per domain; n // 4 refs per condition
    in the study split), one short epoch, all files under `tmp`."""
    return [
        f"data.root={tmp / 'hdmap'}",
        f"data.synthetic.n_train={n}",
        f"data.synthetic.n_test={n}",
        f"eval.split.refs_per_condition={n // 4}",
        "train.epochs=1",
        f"cache_dir={tmp / 'cache'}",
    ]


def feclip_model(seed: int = 0, **config) -> FEClip:
    """FE-CLIP on a fresh tiny random-init backbone (seeded), taps [1, 3] unless `config` says otherwise,
    random unit text features."""
    torch.manual_seed(seed)
    backbone = ClipBackbone("feclip-tiny", None)
    text = torch.nn.functional.normalize(torch.randn(2, backbone.embed_dim), dim=-1)
    return FEClip(backbone, FEClipConfig(**{"taps": [1, 3], **config}), text)


def hdmap_set(n: int = 12) -> ImageSet:
    """n random HDMAP-shaped (31, 95) maps up to 1.5, alternating labels, sparse masks on the faults."""
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(n, 31, 95, generator=generator) * 1.5
    masks = (torch.rand(n, 31, 95, generator=generator) > 0.95).to(torch.uint8)
    labels = (torch.arange(n) % 2).tolist()
    return labelled_set(images, labels, HDMAPInput((64, 192)), masks * torch.tensor(labels)[:, None, None])


def run_cli(args: list[str], tmp: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"run.py failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def start_cli(args: list[str], cwd: Path, log_name: str = "job.log") -> subprocess.Popen:
    """`run.py args` started in `cwd`, its output in `cwd/log_name` (for tests that signal it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    log = open(cwd / log_name, "w")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def wait_for_epochs(folder: Path, n: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until the job in `folder` has logged `n` epochs (history.csv); an error if `process` ends first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the job ended early ({process.returncode})")
        if (folder / "history.csv").exists() and len({s for s, _, _ in read_history(folder)}) >= n:
            return
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"no {n} epochs in {folder} after {timeout_s} s")


@contextlib.contextmanager
def full_disk(path: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `path` (a real disk that fills up); skips where mounting is refused."""
    path.mkdir(parents=True, exist_ok=True)
    command = ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]
    mounted = subprocess.run(command, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): no real full disk")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[Path]:
    """`path` made immutable with `chattr +i` (unwritable even for root); skips where chattr is refused."""
    changed = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
    if changed.returncode != 0:
        pytest.skip(f"chattr +i is refused here ({changed.stderr.decode().strip()}): no unwritable folder")
    try:
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)
