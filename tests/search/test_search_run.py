"""End to end with `run.py` on small synthetic data (tiny random-init backbone, 1 epoch): a 6-trial search
over two knobs writes its study and selects on the dev metric, its confirm stage compares the pick with the
baseline on the test part; a search stopped by SIGTERM resumes with the same command without repeating its
finished trials."""

import json
import re
import signal
import time
from pathlib import Path

import optuna
from helpers import run_cli, small_data, start_cli, wait_for_epochs

TEST_METRICS = ("auroc", "acc_fa1_cold", "n_scored")


def _study(folder: Path, name: str = "smoke") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


def _search(tmp: Path, n: int = 20) -> list[str]:
    """A search=smoke sweep on a tiny synthetic set, untracked (test_sweeper.py checks the parent run)."""
    return ["-m", "search=smoke", *small_data(tmp, n), f"search.dir={tmp / 'search'}", "tracking=off"]


def test_a_search_writes_its_study_selects_on_dev_and_its_confirm_stage_claims_on_test(tmp_path):
    args = [*_search(tmp_path), "eval.figures=false", "eval.bootstrap=0"]
    run_cli(args, tmp_path)
    study = _study(tmp_path / "search")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6
    best = study.best_trial
    assert best.value == max(t.value for t in study.trials)
    (job,) = best.user_attrs["jobs"].values()
    metrics = json.loads((Path(job["folder"]) / "metrics.json").read_text())["metrics"]
    assert metrics["dev/acc_fa1_cold"] == best.value and not set(TEST_METRICS) & set(metrics)
    report = tmp_path / "search" / "trials" / "report"
    assert (report / "dev_auroc.csv").exists() and not (report / "auroc.csv").exists()
    result = run_cli([*args, "search.stage=confirm", "search.confirm.seeds=[0]"], tmp_path)
    confirm = tmp_path / "search" / "confirm"
    records = [json.loads((confirm / str(i) / "run.json").read_text()) for i in (0, 1)]
    assert [r["status"] for r in records] == ["FINISHED", "FINISHED"]
    assert records[1]["overrides"][-4:-2] == best.user_attrs["overrides"].split()
    assert "acc_fa1_cold" in json.loads((confirm / "1" / "metrics.json").read_text())["metrics"]
    title = f"## Δ vs `{records[0]['tags']['variant']}`: acc_fa1_cold (test part"  # the baseline
    assert title in (confirm / "report" / "report.md").read_text() and title in result.stdout


def test_a_search_stopped_by_sigterm_resumes_without_repeating_finished_trials(tmp_path):
    args = [*_search(tmp_path), "search.n_trials=3", "train.epochs=10", "eval.figures=false"]
    args += ["eval.bootstrap=0"]
    first = start_cli(args, tmp_path)
    wait_for_epochs(tmp_path / "search" / "trials" / "1", 2, first)  # trial 0 told, trial 1 training
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=120) == 143
    assert [t.state.name for t in _study(tmp_path / "search").trials] == ["COMPLETE", "RUNNING"]
    done = json.loads((tmp_path / "search" / "trials" / "0" / "run.json").read_text())
    time.sleep(0.1)
    result = run_cli(args, tmp_path)
    study = _study(tmp_path / "search")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert json.loads((tmp_path / "search" / "trials" / "0" / "run.json").read_text()) == done  # not rerun
    killed = json.loads((tmp_path / "search" / "trials" / "1" / "attempts" / "1" / "run.json").read_text())
    assert killed["status"] == "KILLED" and "SIGTERM" in killed["reason"]
    assert re.findall(r"^feclip search: trial (\d+)", result.stdout, flags=re.MULTILINE) == ["1", "2"]
