"""End to end, in-process: the paper presets (experiment=paper_mvtec, paper_visa) train on one benchmark's
test split and evaluate zero-shot on the others, on tiny fixtures with the tiny random-init backbone; the
MLflow run holds per-category and macro metrics and paper_comparison.csv sits beside them."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from data.benchmark_fixtures import make_btad_fixture, make_mvtec_fixture, make_visa_fixture
from helpers import compose
from mlflow.tracking import MlflowClient

from feclip.data.benchmarks import BENCHMARKS, BenchmarkError
from feclip.jobs.run import main
from feclip.tracking import JobInfo

METRICS = ("image_auroc", "image_ap", "pixel_auroc", "pro")


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("paper")
    make_mvtec_fixture(tmp / "mvtec")
    make_visa_fixture(tmp / "visa")
    make_btad_fixture(tmp / "btad")
    return tmp


def _compose(tmp: Path, experiment: str, overrides: list[str]):
    common = [
        f"experiment={experiment}",
        "backbone=tiny",  # the preset's vit_l14_336 needs real weights
        "train.epochs=1",
        "seed=0",
        f"cache_dir={tmp / 'cache'}",
        f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
    ]
    return compose(*common + overrides)


def _run(tmp: Path, experiment: str, overrides: list[str]) -> tuple[dict, Path]:
    """Compose `experiment` on the tiny backbone, run it, return (its finished MLflow run, output folder)."""
    output = tmp / experiment
    headline = main(_compose(tmp, experiment, overrides), output, JobInfo(experiment, experiment))
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["feclip.random_init"] == "true"
    assert "train_total" in run.data.metrics  # the adapters were trained on the source benchmark
    assert headline == pytest.approx(run.data.metrics["image_auroc"])
    return run, output


def _check_dataset(metrics: dict, name: str, categories: list[str]) -> None:
    """Every category's four metrics are logged, finite, in [0, 1]; each macro value is their plain mean."""
    for metric in METRICS:
        values = [metrics[f"{name}/{category}/{metric}"] for category in categories]
        assert all(0.0 <= value <= 1.0 for value in values), (name, metric, values)
        assert metrics[f"{name}/{metric}"] == pytest.approx(np.mean(values))
    logged = {key.split("/")[1] for key in metrics if key.startswith(f"{name}/") and key.count("/") == 2}
    assert logged == set(categories)


def _check_paper_table(output: Path, metrics: dict, names: list[str]) -> None:
    table = pd.read_csv(output / "paper_comparison.csv")
    assert list(table.columns) == ["dataset", "metric", "measured", "paper", "random_init"]
    assert table["random_init"].all()  # the tiny backbone: these numbers test the pipeline
    assert len(table) == 4 * len(names)
    for row in table.itertuples():
        assert row.paper == BENCHMARKS[row.dataset].paper[row.metric]
        assert row.measured == pytest.approx(100 * metrics[f"{row.dataset}/{row.metric}"])


def test_paper_mvtec_trains_on_visa_and_reports_every_mvtec_category(tmp):
    run, output = _run(
        tmp, "paper_mvtec", [f"aux.root={tmp / 'visa'}", f"eval.datasets.0.root={tmp / 'mvtec'}"]
    )
    _check_dataset(run.data.metrics, "mvtec", ["bottle", "screw"])
    assert json.loads((output / "metrics.json").read_text())["metrics"]["mvtec/pro"] == pytest.approx(
        run.data.metrics["mvtec/pro"]
    )
    _check_paper_table(output, run.data.metrics, ["mvtec"])
    logged = {a.path for a in MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}").list_artifacts(run.info.run_id)}
    assert {"paper_comparison.csv", "metrics.json", "checkpoint"} <= logged


def test_paper_visa_trains_on_mvtec_and_reports_visa_and_btad(tmp):
    run, output = _run(
        tmp,
        "paper_visa",
        [
            f"aux.root={tmp / 'mvtec'}",
            f"eval.datasets.0.root={tmp / 'visa'}",
            f"eval.datasets.1.root={tmp / 'btad'}",
        ],
    )
    _check_dataset(run.data.metrics, "visa", ["candle", "pcb1"])
    _check_dataset(run.data.metrics, "btad", ["01", "02"])
    headline = np.mean([run.data.metrics["visa/image_auroc"], run.data.metrics["btad/image_auroc"]])
    assert run.data.metrics["image_auroc"] == pytest.approx(headline)
    _check_paper_table(output, run.data.metrics, ["visa", "btad"])


def test_a_missing_target_dataset_fails_before_training(tmp):
    overrides = [
        f"aux.root={tmp / 'mvtec'}",
        f"eval.datasets.0.root={tmp / 'visa'}",
        f"eval.datasets.1.root={tmp / 'no_btad'}",
        "tracking.experiment=paper_bad_root",
    ]
    cfg = _compose(tmp, "paper_visa", overrides)
    with pytest.raises(BenchmarkError, match=r"btad root .*no_btad is not a directory; expected <root>/<01"):
        main(cfg, tmp / "bad_root", JobInfo("bad_root", "bad_root"))
    client = MlflowClient(f"sqlite:///{tmp / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("paper_bad_root").experiment_id])
    assert run.info.status == "FAILED" and "train_total" not in run.data.metrics
