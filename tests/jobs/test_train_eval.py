"""The HDMAP job under the study split: one scored set for every run, banks and gates from the refs part
only, deployability, and thresholds at named false-alarm points carried into the saved predictor."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose, run_cli, small_data
from mlflow.tracking import MlflowClient

from feclip.data.hdmap import load_domain
from feclip.evaluation.predictor import load_predictor, predict_files
from feclip.evaluation.split import split_test
from feclip.jobs.run import main
from feclip.jobs.train_eval import part_metrics_of
from feclip.runtime import Runtime
from feclip.tracking import JobInfo

N = 40  # small_data: 40 train, 40 + 40 test images, 20 per (label, condition)


def _job(tmp: Path, name: str, *overrides: str, capsys=None) -> tuple[Path, dict, str]:
    """One tracked-off job of patchcore on the small set: (folder, metrics.json, closing block)."""
    cfg = compose(
        "method=patchcore", *small_data(tmp), "tracking.enabled=false", "eval.figures=false", *overrides
    )
    main(cfg, tmp / name, JobInfo(name, name))
    out = capsys.readouterr().out if capsys else ""
    return tmp / name, json.loads((tmp / name / "metrics.json").read_text()), out


def _tags(job: Path) -> dict:
    return json.loads((job / "run.json").read_text())["tags"]


def _parts(root: Path, *overrides: str) -> pd.Series:
    """The study split of the small set's domain C: part per test path."""
    test = load_domain(root, "C", splits=("test",), cold_warm_split=N // 2)
    split = split_test(test.meta, compose(*small_data(root.parent), *overrides).eval.split)
    return pd.Series(split.part, index=test.meta["path"])


def test_a_dev_only_runs_figures_get_its_thresholds_with_the_dev_metrics():
    """A search trial scores the dev part only: its figures read the dev metrics under plain names and the
    deployable thresholds (unprefixed: made on refs), so they draw the fa1 lines and mark hits and misses."""
    metrics = {"thr_fa1": 0.5, "thr_fa1_cold": 0.4, "dev/auroc": 0.7, "dev/acc_fa1": 0.6}
    expected = {"thr_fa1": 0.5, "thr_fa1_cold": 0.4, "auroc": 0.7, "acc_fa1": 0.6}
    assert part_metrics_of(metrics, "dev") == expected
    assert part_metrics_of(metrics, "test") is metrics


def test_methods_and_seeds_log_one_eval_set(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "method=feclip,patchcore", "seed=0,1", f"tracking.uri={uri}", "tracking.experiment=split"]
    args += [f"hydra.sweep.dir={tmp_path / 'multirun'}", "eval.figures=false", *small_data(tmp_path)]
    run_cli(args, tmp_path)
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("split").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 4
    for key in ("eval_set", "dev/eval_set"):
        assert len({r.data.tags[key] for r in children}) == 1
    for key in ("n_scored", "dev/n_scored"):
        assert len({r.data.metrics[key] for r in children}) == 1
    parts = _parts(tmp_path / "hdmap")
    assert children[0].data.metrics["n_scored"] == (parts == "test").sum()
    assert children[0].data.metrics["dev/n_scored"] == (parts == "dev").sum()


def test_fewshot_rows_score_the_same_images_and_banks_see_only_refs(tmp_path):
    data = [a for a in small_data(tmp_path) if not a.startswith("eval.split.refs_per_condition")]
    args = ["-m", "method=patchcore", "fewshot.k=1,4,16", "gating=p90", "eval.split.refs_per_condition=16"]
    args += [
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
        "tracking.enabled=false",
        "eval.figures=false",
        *data,
    ]
    run_cli(args, tmp_path)
    parts = _parts(tmp_path / "hdmap", "eval.split.refs_per_condition=16")
    jobs = sorted((tmp_path / "multirun").glob("*/scores.csv"))
    assert len(jobs) == 3
    for job in jobs:
        scores = pd.read_csv(job)
        assert scores["path"].tolist() == parts.index[parts != "refs"].tolist()
        assert (scores["split"].to_numpy() == parts[scores["path"]].to_numpy()).all()
        predictor = json.loads((job.parent / "checkpoint" / "predictor.json").read_text())
        references = predictor["references"]["state"]["reference_paths"]
        assert len(references) == 2 * predictor["references"]["state"]["k"]
        assert (parts[references] == "refs").all()  # banks and the p90 gate: refs images only
        assert _tags(job.parent)["deployable"] == "true"
        assert json.loads((job.parent / "metrics.json").read_text())["deployable"] is True


def test_the_oracle_gate_marks_the_run_not_deployable(tmp_path, capsys):
    job, record, closing = _job(tmp_path, "oracle", "fewshot=k1", "gating=oracle", capsys=capsys)
    assert record["deployable"] is False and "gating=oracle" in record["not_deployable_because"][0]
    assert _tags(job)["deployable"] == "false" and "gating=oracle" in _tags(job)["deployable_reason"]
    assert "NOT DEPLOYABLE: gating=oracle" in closing
    assert record["metrics"]["gate_acc"] == 1.0 and "dev/gate_acc" in record["metrics"]


def test_whole_test_reproduces_the_runs_before_the_split(tmp_path):
    """Every test image but the references is scored, and the numbers are those of the same run before the
    study split (main at 8ea6fec, this config: the tiny random-init PatchCore, seed 0)."""
    job, record, _ = _job(tmp_path, "whole", "fewshot=k4", "gating=p90", "eval.split.protocol=whole_test")
    scores, metrics = pd.read_csv(job / "scores.csv"), record["metrics"]
    assert len(scores) == 2 * N - 8 and (scores["split"] == "test").all()
    assert metrics["n_scored"] == 2 * N - 8 and metrics["n_references_excluded"] == 8
    assert not any(key.startswith("dev/") for key in metrics)
    before = {"auroc": 0.803125, "auroc_cross": 0.346875, "acc_val": 0.5833333, "thr_val": 0.6518812}
    before |= {"acc_oracle": 0.7777778, "gate_acc": 0.9166667, "pixel_auroc": 0.6293797}
    assert {key: metrics[key] for key in before} == pytest.approx(before, abs=1e-6)
    assert record["deployable"] is True and "eval_set" in _tags(job)


@pytest.mark.parametrize("gating", ["none", "p90"])
def test_refs_thresholds_per_condition_reach_the_saved_predictor(tmp_path, gating):
    """source=refs, per condition: the refs normals outside the banks set one threshold per condition (the
    gate's routing, else the known condition: then not deployable); predict mode decides as the run did."""
    fewshot = ["fewshot=k1", f"gating={gating}"] if gating != "none" else []
    job, record, _ = _job(
        tmp_path, gating, *fewshot, "eval.threshold.source=refs", "eval.threshold.per_condition=true"
    )
    metrics, refs = record["metrics"], N // 4 - (1 if fewshot else 0)
    assert (
        metrics["n_thr_normals_cold"] + metrics["n_thr_normals_warm"] == metrics["n_thr_normals"] == 2 * refs
    )
    if not fewshot:  # the known condition; the gate routes by its own decision
        assert metrics["n_thr_normals_cold"] == refs
    assert metrics["thr_fa1_cold"] != metrics["thr_fa1_warm"]
    assert record["deployable"] is (gating != "none")
    calibrated = json.loads((job / "checkpoint" / "predictor.json").read_text())["calibration"]
    assert calibrated["condition_from"] == ("gate" if fewshot else "condition")
    assert calibrated["threshold_source"] == "refs" and calibrated["operating_point"] == "fa1"
    scores = pd.read_csv(job / "scores.csv").query("split == 'test'")
    predictor = load_predictor(job / "checkpoint", torch.device("cpu"))
    table = predict_files(
        predictor, [Path(p) for p in scores["path"]], Runtime(torch.device("cpu")), operating_point="fa1"
    )
    flagged = (table["decision"] == "fault").to_numpy()
    good = (scores["label"] == 0).to_numpy()
    if fewshot:  # the checkpoint routes as the run did: the run's own false-alarm rate
        assert flagged[good].mean() == pytest.approx(metrics["far_fa1"])
    else:  # no gate to route unlabelled files: the checkpoint decides with the global threshold
        np.testing.assert_array_equal(flagged, scores["score"].to_numpy() > metrics["thr_fa1"])
