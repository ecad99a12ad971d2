"""The search sweeper in a real Hydra multirun with a stand-in job (`toy_app.py`: the real job record and
sweep callback, metrics set by the knobs): a 6-trial grid picks the dev optimum where the test optimum
differs, a failed job is a failed trial, the study and its record land on disk and on the parent run; a
test-metric objective is refused in one line before anything is written."""

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
from helpers import ROOT, run_cli
from mlflow import MlflowClient

TOY = Path(__file__).with_name("toy_app.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _toy(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOY), *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300
    )


def test_a_grid_search_selects_on_dev_and_records_a_failed_trial(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "search=smoke", "search.sampler=grid", "freq=dct", "model.lam=choice(0.2,0.5,0.8)"]
    args += ["train.lr=choice(0.001,0.002)", f"search.dir={tmp_path / 'search'}", f"tracking.uri={uri}"]
    result = _toy(args, tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]  # one failed job: the sweep's usual exit code
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{tmp_path / 'search' / 'study.db'}")
    states = sorted(t.state.name for t in study.trials)
    assert states == ["COMPLETE"] * 5 + ["FAIL"]
    (failed,) = [t for t in study.trials if t.state.name == "FAIL"]
    assert failed.params == {"model.lam": 0.5, "train.lr": 0.002}
    assert "toy failure" in failed.user_attrs["failure"]
    assert study.best_trial.params == {"model.lam": 0.2, "train.lr": 0.001}  # the test optimum is lam 0.8
    for trial in (t for t in study.trials if t != failed):  # the dev part only: no test number exists
        (job,) = trial.user_attrs["jobs"].values()
        metrics = json.loads((Path(job["folder"]) / "metrics.json").read_text())["metrics"]
        assert list(metrics) == ["dev/acc_fa1_cold"]
    record = tmp_path / "search" / "trials" / "study"
    best = (record / "best.md").read_text()
    assert "feclip run freq=dct" in best and "model.lam=0.2 train.lr=0.001 domain=C" in best
    assert "search.stage=confirm" in best and "random-init" in best
    assert len((record / "trials.csv").read_text().strip().splitlines()) == 7
    assert "feclip search smoke: 6 trials (5 complete, 1 failed)" in result.stdout
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("search_smoke").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("feclip.parent") == "true"]
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    figures = {"study/optimization_history.png", "study/param_importances.png"}
    assert {"study/best.md", "study/trials.csv", *figures} <= logged, logged
    assert parent.data.metrics["search/best dev/acc_fa1_cold C"] == study.best_value
    assert parent.data.tags["search.best_overrides"] == "model.lam=0.2 train.lr=0.001"
    refused = _toy([*args, "search.stage=confirm", 'search.confirm.baseline=["method=nope"]'], tmp_path)
    assert refused.returncode == 2 and not (tmp_path / "search" / "confirm").exists()
    assert "feclip: error: search.confirm.baseline=['method=nope'] cannot run: " in refused.stderr


def test_a_test_metric_objective_is_refused_in_one_line_before_anything_is_written(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = ["-m", "search=smoke", "search.objective=test/auroc_cold", f"search.dir={tmp_path / 'search'}"]
    result = run_cli([*args, f"tracking.uri={uri}"], tmp_path, check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("feclip")]
    assert line.startswith(
        "feclip: error: search.objective='test/auroc_cold' is not allowed; expected a metric"
    )
    assert "test part is for claims" in line and "Traceback" not in result.stderr
    assert not (tmp_path / "search").exists() and not (tmp_path / "mlflow.db").exists()
