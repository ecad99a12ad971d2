"""The study's record: a Pareto front's pick (the best mean), the trials table, Optuna's figures per objective
and the Pareto front (in-process, an in-memory study)."""

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from feclip.search.record import figures, trials_table
from feclip.search.study import best_trials, pick

NAMES = ["dev/acc A", "dev/acc C"]


def _study() -> optuna.Study:
    """Two objectives (maximise), four complete trials and a failed one over model.lam."""
    study = optuna.create_study(directions=["maximize", "maximize"])
    dist = {"model.lam": FloatDistribution(0.0, 1.0)}
    for lam, values in [(0.1, [0.9, 0.5]), (0.3, [0.8, 0.8]), (0.5, [0.5, 0.9]), (0.7, [0.4, 0.4])]:
        attrs = {"overrides": f"model.lam={lam}", "jobs": {"A": {"run_id": "r"}}}
        study.add_trial(
            create_trial(params={"model.lam": lam}, distributions=dist, values=values, user_attrs=attrs)
        )
    failed = {"failure": "job of domain C failed: boom"}
    study.add_trial(
        create_trial(state=TrialState.FAIL, params={"model.lam": 0.9}, distributions=dist, user_attrs=failed)
    )
    return study


def test_a_pareto_fronts_pick_is_its_best_mean_and_the_table_lists_every_trial():
    study = _study()
    assert sorted(t.number for t in best_trials(study)) == [0, 1, 2]
    assert pick(study).number == 1  # means 0.7, 0.8, 0.7
    table = trials_table(study, NAMES)
    assert list(table["state"]) == ["COMPLETE"] * 4 + ["FAIL"]
    assert table.loc[4, "failure"] == "job of domain C failed: boom" and table.loc[1, "dev/acc C"] == 0.8


def test_figures_per_objective_and_the_pareto_front(tmp_path):
    paths = figures(_study(), NAMES, tmp_path, "random-init backbone: numbers test the pipeline")
    names = sorted(p.name for p in paths)
    assert names == [
        "optimization_history_0.png",
        "optimization_history_1.png",
        "param_importances_0.png",
        "param_importances_1.png",
        "pareto_front.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)
