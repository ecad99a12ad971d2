"""Decidable studies end to end: a sweep of two methods x two seeds on small synthetic data scores every run
on the same images with intervals on every metric, its report carries the paired Δ table, a run that read
test labels is NOT DEPLOYABLE, a run of another split is left out of the tables with one line, and
`python -m feclip.compare` gives the same paired comparison from the job folders."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import run_cli, small_data
from mlflow import MlflowClient

from feclip.evaluation.compare import RUN_INTERVALS
from feclip.tracking import PARENT_FILE
from feclip.tracking.commands import report_main
from feclip.tracking.report import folder_runs, variant_domain_table

INTERVAL_METRICS = (
    *RUN_INTERVALS,
    *(f"acc_{point}{suffix}" for point in ("val", "fa1") for suffix in ("", "_cold")),
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The sweep (feclip, patchcore x seeds 0, 1), an oracle-gated run and a run of another study split."""
    tmp = tmp_path_factory.mktemp("study")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    common = [*small_data(tmp), f"tracking.uri={uri}", "tracking.experiment=study", "eval.figures=false"]
    sweep = ["-m", "method=feclip,patchcore", "domain=C", "seed=0,1", "compare.baseline=patchcore.tiny"]
    run_cli([*sweep, f"hydra.sweep.dir={tmp / 'sweep'}", *common], tmp)
    run_cli([f"hydra.run.dir={tmp / 'oracle'}", "fewshot=k1", "gating=oracle", *common], tmp)
    run_cli([f"hydra.run.dir={tmp / 'other_split'}", "eval.split.seed=1", *common], tmp)
    return {"tmp": tmp, "uri": uri, "sweep": tmp / "sweep"}


def _records(sweep: Path) -> list[dict]:
    folders = sorted(p for p in sweep.iterdir() if (p / "run.json").is_file())
    return [
        {
            "tags": json.loads((f / "run.json").read_text())["tags"],
            "metrics": json.loads((f / "metrics.json").read_text())["metrics"],
        }
        for f in folders
    ]


def test_every_run_is_scored_on_the_same_images_with_intervals(study):
    records = _records(study["sweep"])
    assert len(records) == 4
    assert len({r["tags"]["eval_set"] for r in records}) == 1
    assert len({r["metrics"]["n_scored"] for r in records}) == 1
    for record in records:
        metrics = record["metrics"]
        for metric in INTERVAL_METRICS:
            assert metrics[f"{metric}_ci_lo"] <= metrics[metric] <= metrics[f"{metric}_ci_hi"], metric
        assert metrics["auroc_se"] > 0
    client = MlflowClient(study["uri"])
    (child, *_) = [r for r in client.search_runs([client.get_experiment_by_name("study").experiment_id])]
    assert {"auroc_ci_lo", "acc_fa1_cold_ci_hi", "dev/auroc"} <= set(child.data.metrics)


def test_the_sweep_report_has_the_paired_delta_table(study):
    text = (study["sweep"] / "report" / "report.md").read_text()
    assert "## Δ vs `patchcore·tiny`: acc_fa1_cold (test part, paired on identical images)" in text
    assert "| feclip·dct | C | Δ " in text and "p_holm" in text and "2 seeds × " in text
    delta = pd.read_csv(study["sweep"] / "report" / "compare_auroc_cold.csv")
    assert delta[["variant", "domain"]].values.tolist() == [["feclip·dct", "C"]]
    assert "## dev/auroc (x100)" in text and "## acc_fa1_cold (x100)" in text


def test_a_run_that_read_test_labels_is_not_deployable(study):
    record = json.loads((study["tmp"] / "oracle" / "run.json").read_text())
    assert record["tags"]["deployable"] == "false"
    runs = folder_runs(study["sweep"], study["tmp"] / "oracle")
    labels = variant_domain_table(runs, "auroc").index
    assert any(label.endswith("NOT DEPLOYABLE") and "oracle" in label for label in labels)
    assert any(label.startswith("patchcore·tiny") for label in labels)


def test_a_run_of_another_split_is_left_out_with_one_line(study):
    runs = folder_runs(study["sweep"], study["tmp"] / "other_split")
    table = variant_domain_table(runs, "auroc")
    (line,) = table.attrs["left_out"]
    assert line.startswith("left out of domain C: ") and "scored other images than the 4 runs" in line
    assert table.attrs["n_runs"] == 4


def test_the_compare_command_pairs_the_runs_from_their_folders(study, tmp_path):
    out = tmp_path / "delta.csv"
    args = [str(study["sweep"]), str(study["tmp"] / "other_split"), "--baseline", "patchcore.ti"]
    args += ["--metric", "acc_fa1_cold", "--domain", "C", "--bootstrap", "500", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "feclip.compare", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "| feclip·dct | C | Δ " in done.stdout
    assert done.stderr.startswith("feclip.compare: note: left out of domain C")
    row = pd.read_csv(out).iloc[0]
    by_method = {"feclip": [], "patchcore": []}
    for record in _records(study["sweep"]):
        by_method[record["tags"]["method"]].append(record["metrics"]["acc_fa1_cold"])
    expected = np.mean(by_method["feclip"]) - np.mean(by_method["patchcore"])
    assert row["delta"] == pytest.approx(expected, abs=1e-9) and row["n_seeds"] == 2


def test_the_compare_command_refuses_in_one_line(study):
    done = subprocess.run(
        [sys.executable, "-m", "feclip.compare", str(study["sweep"]), "--baseline", "winclip.default"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "--baseline 'winclip.default' names no variant of" in done.stderr


def test_feclip_report_of_a_sweep_folder_equals_the_report_of_its_store(study, tmp_path):
    """`feclip report --sweep-dir` reads the job folders (no store); the store's report of the same sweep
    (its parent run's children) has the same cells."""
    parent = json.loads((study["sweep"] / PARENT_FILE).read_text())["run_id"]
    metrics = ["auroc", "acc_fa1_cold"]
    store = ["--uri", study["uri"], "--experiment", "study", "--parent-run-id", parent]
    assert (
        report_main(["--sweep-dir", str(study["sweep"]), "--metrics", *metrics, "--out", str(tmp_path / "f")])
        == 0
    )
    assert report_main([*store, "--metrics", *metrics, "--out", str(tmp_path / "s")]) == 0
    for metric in metrics:
        folders, stored = (pd.read_csv(tmp_path / part / f"{metric}.csv") for part in ("f", "s"))
        assert len(folders) == 2 and folders.equals(stored), metric
    assert report_main(["--sweep-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2  # no jobs there
