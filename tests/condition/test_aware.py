"""Condition-aware FE-CLIP end to end: gates x reference-bank sizes as one sweep on synthetic HDMAP."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import compose, run_cli, small_data
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from feclip.condition.aware import deployable_gate, reads_test_labels
from feclip.condition.gates import make_gate

GATE_GROUPS = ("gate_acc_good_cold", "gate_acc_good_warm", "gate_acc_fault_cold", "gate_acc_fault_warm")


def test_gating_and_bank_size_sweep(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_cli(
        [
            "-m",
            "domain=C",
            "gating=none,oracle,p90,soft",
            "fewshot.k=1,4",
            "fewshot.context=multi_k",
            f"tracking.uri={uri}",
            "tracking.experiment=ca",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
            "eval.figures=false",
            *small_data(tmp_path),
        ],
        tmp_path,
    )
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("ca").experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(children) == 8 and all(r.info.status == "FINISHED" for r in children)
    for run in children:
        gate, k = run.data.params["gating.name"], int(run.data.params["fewshot.k"])
        metrics = run.data.metrics
        assert metrics["n_references_excluded"] == 2 * k
        assert ("gate_acc" in metrics) == (gate != "none")
        if gate == "oracle":
            assert metrics["gate_acc"] == 1.0 and all(metrics[g] == 1.0 for g in GATE_GROUPS)
        if gate != "none":
            assert 0.0 <= metrics["gate_acc"] <= 1.0 and all(g in metrics for g in GATE_GROUPS)
    scored = set()
    for job in (tmp_path / "multirun").glob("*/scores.csv"):
        scores = pd.read_csv(job)
        references = json.loads((job.parent / "checkpoint" / "predictor.json").read_text())["references"]
        assert not set(references["state"]["reference_paths"]) & set(scores["path"])
        scored.add(tuple(scores["path"]))
        assert "gate" in scores
    assert len(scored) == 1 and len(next(iter(scored))) == 80 - 2 * 10  # the study split: k does not matter


def test_a_gate_that_needs_labels_gets_the_p90_stand_in_for_unlabelled_images():
    raw = torch.cat([torch.full((2, 31, 95), 0.2), torch.full((2, 31, 95), 0.4)])
    condition = np.array(["cold", "cold", "warm", "warm"])
    oracle = make_gate("oracle")
    stand_in = deployable_gate(oracle, raw, None, condition)
    assert stand_in.name == "p90" and stand_in.threshold == pytest.approx(0.3)
    p90 = make_gate("p90").fit(raw, None, condition)
    assert deployable_gate(p90, raw, None, condition) is p90
    assert stand_in.decide(torch.full((1, 31, 95), 0.35)).condition.tolist() == ["warm"]


def test_the_random_gate_is_seeded_from_the_run_seed():
    cfg = compose("fewshot=k1", "gating=random", "seed=7")
    assert make_gate(**OmegaConf.to_container(cfg.gating, resolve=True)).seed == 7


def test_what_reads_test_labels():
    assert reads_test_labels(compose("fewshot=k1", "gating=p90")) == []
    assert "gating=oracle" in reads_test_labels(compose("fewshot=k1", "gating=oracle"))[0]
    per_condition = ["eval.threshold.per_condition=true"]
    assert reads_test_labels(compose("fewshot=k1", "gating=p90", *per_condition)) == []  # the gate routes
    assert "per_condition" in reads_test_labels(compose("eval.threshold.source=refs", *per_condition))[0]
