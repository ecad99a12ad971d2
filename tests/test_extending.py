"""docs/architecture.md says which files to touch to add a transform, a gate, a dataset or a method. Each test
here does exactly that with a throwaway entry (its registry line + its config file in a temporary config
folder on `hydra.searchpath`) and runs one job with it: the proof that the list is complete."""

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from data.benchmark_fixtures import make_mvtec_fixture
from helpers import compose

from feclip.condition.gates import GATES, GateDecision
from feclip.data import benchmarks
from feclip.jobs.run import main
from feclip.methods.base import Method, MethodOutput
from feclip.methods.registry import METHODS
from feclip.model.frequency import TRANSFORMS, WindowTransform
from feclip.tracking import JobInfo


def haar_matrix(n: int) -> torch.Tensor:
    """Orthonormal Haar basis (n, n) for n a power of two."""
    if n == 1:
        return torch.ones(1, 1, dtype=torch.float64)
    half = haar_matrix(n // 2)
    top = torch.kron(half, torch.tensor([[1.0, 1.0]], dtype=torch.float64))
    bottom = torch.kron(
        torch.eye(n // 2, dtype=torch.float64), torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    )
    return torch.cat([top, bottom]) / np.sqrt(2.0)


@dataclass
class MeanLevelGate:
    """Cold iff the image mean is below the midpoint of the cold and warm references' means."""

    threshold: float | None = None
    name: ClassVar[str] = "mean_level"
    needs_labels: ClassVar[bool] = False
    assigns_condition: ClassVar[bool] = True

    def fit(self, images, cls_embedding=None, condition=None):
        means, condition = images.flatten(1).mean(1).cpu().numpy(), np.asarray(condition)
        self.threshold = float((means[condition == "cold"].max() + means[condition == "warm"].min()) / 2)
        return self

    def decide(self, images, cls_embedding=None, meta=None) -> GateDecision:
        cold = images.flatten(1).mean(1) <= self.threshold
        return GateDecision(np.where(cold.cpu().numpy(), "cold", "warm"), cold.float())

    def state(self):
        return {"name": self.name, "threshold": self.threshold}


class MeanIntensity(Method):
    """The mean input intensity as the anomaly score; the input itself as the map."""

    name: ClassVar[str] = "mean_intensity"

    def __init__(self, size):
        self.model, self.size = torch.nn.Identity(), tuple(size)

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.method.input_size)

    def input_stats(self):
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    @property
    def input_size(self):
        return self.size

    def forward(self, inputs=None, *, frozen=None) -> MethodOutput:
        grid = inputs.mean(1)
        return MethodOutput(grid.flatten(1).mean(1), grid, [grid[..., None]])

    def with_references(self, out, terms):
        return out.score, out.map

    def save(self, directory: Path) -> None:
        (directory / "mean_intensity.json").write_text(json.dumps({"size": list(self.size)}))

    @classmethod
    def load(cls, directory: Path):
        return cls(json.loads((directory / "mean_intensity.json").read_text())["size"])


@contextlib.contextmanager
def registered(registry, name: str, entry):
    """`entry` registered under `name` for the duration (throwaway entries never leak into other tests)."""
    registry.register(name, entry)
    try:
        yield
    finally:
        registry.unregister(name)


@pytest.fixture()
def extra_conf(tmp_path):
    """A config folder for the throwaway variants, with a writer for its YAML files."""
    folder = tmp_path / "extra_conf"

    def write(group: str, name: str, text: str) -> None:
        (folder / group).mkdir(parents=True, exist_ok=True)
        (folder / group / f"{name}.yaml").write_text(text)

    return folder, write


def _run(tmp_path, small_root, folder, *overrides) -> dict:
    hdmap = not any(o.startswith("eval=") for o in overrides)
    cfg = compose(
        f"hydra.searchpath=[file://{folder}]",
        f"data.root={small_root}",
        "data.synthetic.n_train=20",
        "data.synthetic.n_test=20",
        "train.epochs=1",
        "tracking.enabled=false",
        f"cache_dir={tmp_path / 'cache'}",
        *(["eval.split.refs_per_condition=4"] if hdmap else []),  # 10 test/good per condition
        *overrides,
    )
    main(cfg, tmp_path / "out", JobInfo("extend", "extend"))
    return json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]


def test_a_registered_haar_transform_runs_a_job(tmp_path, small_root, extra_conf):
    folder, write = extra_conf
    windows = "ffe: {window: [2, 2]}\nlfs: {window: [2, 2]}\n"
    write("freq", "haar", f"defaults:\n  - dct\n  - _self_\ntransform: haar\n{windows}")
    with registered(TRANSFORMS, "haar", WindowTransform.from_basis(haar_matrix)):
        metrics = _run(tmp_path, small_root, folder, "freq=haar")
    description = json.loads((tmp_path / "out" / "checkpoint" / "model.json").read_text())
    assert description["config"]["freq"]["transform"] == "haar" and 0 <= metrics["auroc"] <= 1


def test_a_registered_gate_runs_a_job(tmp_path, small_root, extra_conf):
    folder, write = extra_conf
    write("gating", "mean_level", "name: mean_level\nthreshold: null\n")
    with registered(GATES, "mean_level", MeanLevelGate):
        metrics = _run(tmp_path, small_root, folder, "gating=mean_level", "fewshot=k1")
    assert 0 <= metrics["gate_acc"] <= 1 and metrics["n_references_excluded"] == 2


def test_a_registered_dataset_runs_the_benchmark_job(tmp_path, small_root, extra_conf):
    folder, write = extra_conf
    make_mvtec_fixture(tmp_path / "bottles")
    entry = benchmarks.Benchmark(("bottle",), "the MVTec AD layout", benchmarks.BENCHMARKS["mvtec"].lister)
    datasets = f"[{{name: bottles, root: {tmp_path / 'bottles'}, geometry: squash}}]"
    write("eval", "bottles", f"protocol: benchmark\nbatch_size: 8\ndatasets: {datasets}\n")
    with registered(benchmarks.BENCHMARKS, "bottles", entry):
        metrics = _run(tmp_path, small_root, folder, "eval=bottles", "aux=none", "fewshot=none")
    assert {"bottles/image_auroc", "bottles/bottle/pro"} <= set(metrics)


def test_a_registered_method_runs_a_job(tmp_path, small_root, extra_conf):
    folder, write = extra_conf
    write("method", "mean_intensity", "name: mean_intensity\ninput_size: [31, 95]\n")
    with registered(METHODS, "mean_intensity", MeanIntensity):
        metrics = _run(tmp_path, small_root, folder, "method=mean_intensity", "aux=none")
    assert 0 <= metrics["auroc"] <= 1 and (tmp_path / "out" / "checkpoint" / "mean_intensity.json").is_file()
