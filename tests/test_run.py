"""End to end: `run.py -m` sweeps on small synthetic HDMAP leave finished MLflow runs, metrics, artifacts
and a report; bad input stops with one actionable line."""

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import run_cli, small_data
from mlflow.tracking import MlflowClient
from mlflow_server import mlflow_server  # noqa: F401

from feclip.tracking.report import collect_runs, variant_domain_table

ROOT = Path(__file__).resolve().parents[1]
HDMAP_METRICS = (
    "auroc",
    "ap",
    "auroc_cold",
    "auroc_warm",
    "auroc_cross",
    "auroc_cross2",
    "acc_oracle",
    "acc_oracle_cold",
    "acc_oracle_warm",
    "acc_val",
    "acc_val_cold",
    "acc_val_warm",
    "f1_max",
    "tpr_at_fpr1",
)
ARTIFACTS = ("config.yaml", "scores.csv", "metrics.json", "images", "checkpoint")  # figures: as images


def check_sweep(uri: str, experiment: str, n_children: int, rows: int = 2) -> list:
    """One finished parent, `n_children` finished children with every metric and artifact; the report's
    auroc table has `rows` variant rows with a cell for A and C. Returns the children."""
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("feclip.parent") == "true"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == n_children
    check_parent_study(client, parents[0])
    for child in children:
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert child.data.tags["feclip.random_init"] == "true"
        assert set(HDMAP_METRICS) <= set(child.data.metrics), set(HDMAP_METRICS) - set(child.data.metrics)
        assert ("train_total" in child.data.metrics) == (child.data.tags["method"] == "feclip")
        logged = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert set(ARTIFACTS) <= logged and "figures" not in logged, logged  # each figure once
        assert child.info.run_name.startswith(child.data.tags["domain"])
    table = variant_domain_table(collect_runs(uri, experiment), "auroc")
    body = table.loc[[r for r in table.index if not r.startswith("anchor")], ["A", "C"]]
    assert body.shape == (rows, 2) and (body != "–").all().all()
    return children


def check_parent_study(client, parent) -> None:
    """The parent carries the study: report tables (md + csv) and the comparison figure, multirun.yaml, the
    commit; no metrics of its own (the children carry them)."""
    logged = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report", "multirun.yaml"} <= logged, logged
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    expected = {"report/report.md", "report/auroc.csv", "report/runs.csv", "report/comparison.png"}
    assert expected <= report, report
    assert parent.data.metrics == {}, parent.data.metrics
    assert len(parent.data.tags["mlflow.source.git.commit"]) == 40


def test_job_with_chdir_uses_launch_paths_and_the_store_artifact_root(tmp_path):
    """`hydra.job.chdir=true` with relative paths: data, cache and store stay in the launch folder, the
    artifacts land beside the sqlite store, the run has its dataset, system metrics and a closing block."""
    args = ["hydra.job.chdir=true", "tracking.uri=sqlite:///store/mlflow.db", "tracking.experiment=chdir"]
    args += ["data.root=hdmap", "cache_dir=cache", "hydra.run.dir=job", "tracking.system_metrics_s=0.5"]
    args += [a for a in small_data(tmp_path) if not a.startswith(("data.root", "cache_dir"))]
    result = run_cli(args, tmp_path)
    assert (tmp_path / "hdmap" / "domain_C").is_dir() and not (tmp_path / "job" / "hdmap").exists()
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("chdir").experiment_id])[0]
    assert run.info.status == "FINISHED"
    assert run.info.artifact_uri.startswith((tmp_path / "store" / "mlartifacts").as_uri())
    assert {"metrics.json", "scores.csv", "checkpoint"} <= {
        a.path for a in client.list_artifacts(run.info.run_id)
    }
    dataset = run.inputs.dataset_inputs[0].dataset
    assert dataset.name == "synthetic_hdmap_C" and str(tmp_path / "hdmap") in dataset.source
    assert any(key.startswith("system/") for key in run.data.metrics), run.data.metrics
    assert f"/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in result.stdout
    assert f"folder: {tmp_path / 'job'}" in result.stdout and "auroc " in result.stdout
    assert "token cache: " in result.stdout and f"GB in {tmp_path / 'cache'}" in result.stdout


def test_three_methods_on_two_domains_into_sqlite(tmp_path):
    """`run.py -m method=feclip,patchcore,winclip domain=A,C`: 6 finished runs under one parent and the
    report's method x domain table."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "method=feclip,patchcore,winclip", "domain=A,C", f"tracking.uri={uri}"]
    args += ["tracking.experiment=e2e", f"hydra.sweep.dir={tmp_path / 'multirun'}", *small_data(tmp_path)]
    run_cli(args, tmp_path)
    children = check_sweep(uri, "e2e", 6, rows=3)
    assert sorted(c.info.run_name for c in children) == [
        "A-feclip·dct",
        "A-patchcore·tiny",
        "A-winclip·paper",
        "C-feclip·dct",
        "C-patchcore·tiny",
        "C-winclip·paper",
    ]
    table = variant_domain_table(collect_runs(uri, "e2e"), "auroc")
    assert [r for r in table.index if not r.startswith("anchor")] == [
        "feclip·dct [feclip-tiny]",
        "patchcore·tiny [tiny]",
        "winclip·paper [feclip-tiny]",
    ]


def test_a_grid_over_what_a_method_does_not_read_runs_each_computation_once(tmp_path):
    """The issue's grid on one domain and seed, two jobs at a time, untracked: FE-CLIP's dct and fft and one
    PatchCore job run; the PatchCore job of the other freq is folded (either may win the race), named in one
    line; FE-CLIP and PatchCore carry their own variants; `tracking=off` names nothing."""
    sweep = tmp_path / "multirun"
    args = ["-m", "method=feclip,patchcore", "freq=dct,fft", "tracking=off", "hydra/launcher=joblib"]
    args += [
        "hydra.launcher.n_jobs=2",
        f"hydra.sweep.dir={sweep}",
        "eval.figures=false",
        *small_data(tmp_path),
    ]
    result = run_cli(args, tmp_path)
    records = [json.loads((sweep / str(number) / "run.json").read_text()) for number in range(4)]
    assert [r["status"] for r in records[:2]] == ["FINISHED", "FINISHED"]
    assert sorted(r["status"] for r in records[2:]) == ["FINISHED", "SKIPPED"]
    assert [r["tags"]["variant"] for r in records] == ["feclip·dct", "feclip·fft", *["patchcore·tiny"] * 2]
    assert [r["run_name"] for r in records] == ["C-feclip·dct", "C-feclip·fft", *["C-patchcore·tiny"] * 2]
    (folded,) = [number for number in (2, 3) if records[number]["status"] == "SKIPPED"]
    freq = "fft" if folded == 3 else "dct"
    assert (
        records[folded]["reason"]
        == f"same as job {5 - folded} (C-patchcore·tiny): patchcore does not read freq={freq}"
    )
    lines = [
        line for line in result.stdout.splitlines() if line.startswith("feclip sweep ") and "folded" in line
    ]
    assert lines == [
        f"feclip sweep {tmp_path.name}/multirun: folded 1 grid point, not run: the same computation as "
        "another job (the method does not read the overrides in brackets): "
        f"job {folded} [freq={freq}] = job {5 - folded}"
    ]
    table = pd.read_csv(sweep / "report" / "auroc.csv")
    assert sorted(set(table["variant"])) == [
        "feclip·dct [feclip-tiny]",
        "feclip·fft [feclip-tiny]",
        "patchcore·tiny [tiny]",
    ]
    patchcore = records[5 - folded]["params"]
    assert "method.coreset_ratio" in patchcore and not [
        k for k in patchcore if k.startswith(("freq.", "prompt."))
    ]
    assert "freq.transform" in records[0]["params"]


def test_two_domains_two_freqs_against_a_real_mlflow_server(tmp_path, mlflow_server):  # noqa: F811
    run_cli(
        [
            "-m",
            "domain=A,C",
            "freq=dct,fft",
            f"tracking.uri={mlflow_server.uri}",
            "tracking.experiment=e2e_server",
            f"hydra.sweep.dir={tmp_path / 'multirun'}",
            *small_data(tmp_path),
        ],
        tmp_path,
    )
    children = check_sweep(mlflow_server.uri, "e2e_server", 4)
    assert sorted(c.info.run_name for c in children) == [
        "A-feclip·dct",
        "A-feclip·fft",
        "C-feclip·dct",
        "C-feclip·fft",
    ]
    job = next(
        p.parent
        for p in (tmp_path / "multirun").glob("*/config.yaml")
        if "name: C" in p.read_text() and "transform: fft" in p.read_text()
    )
    record = json.loads((job / "metrics.json").read_text())
    metrics = record["metrics"]
    assert record["random_init"] is True and "not FE-CLIP" in record["note"]
    assert 0.0 <= metrics["auroc"] <= 1.0 and "pixel_auroc" in metrics  # synthetic data has masks
    assert (job / "figures" / "anomaly_maps.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, expected",
    [
        (["freq=fftt"], "fftt"),
        (["model.lamda=0.1"], "lamda"),
        (["domain=E"], "domain"),
        (["data=hdmap", "data.root=/nonexistent/HDMAP"], "/nonexistent/HDMAP"),
        (["tracking.uri=http://127.0.0.1:9"], "127.0.0.1:9"),
    ],
)
def test_bad_input_is_one_actionable_line(tmp_path, args, expected):
    data = [] if "data=hdmap" in args else small_data(tmp_path)  # the real-data config has no generator keys
    result = run_cli([*args, *data], tmp_path, check=False)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
