"""A search space from `search.params` and the command line, the objective's checks, a trial's objective from
its job folders, and the checks every shipped space passes before its first trial (in-process, no job)."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import CONF, compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from feclip.config import ConfigError, validate
from feclip.search.plan import Plan, plan
from feclip.search.space import SearchError, build_space, identity, objective_names, param_overrides
from feclip.search.study import LOCK_FILE, open_study
from feclip.search.trials import trial_outcome
from feclip.tracking.local import write_json

SPACES = sorted(p.stem for p in (CONF / "search").glob("*.yaml") if p.stem != "base")


def planned(*overrides: str) -> Plan:
    """`plan` of the multirun config these command-line overrides compose to."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        config = GlobalHydra.instance().hydra.compose_config(
            "config", list(overrides), run_mode=RunMode.MULTIRUN, with_log_configuration=False
        )
        return plan(config)


def _search(**params) -> OmegaConf:
    return OmegaConf.create(
        {"params": params, "domains": None, "objective": "dev/auroc", "aggregate": "mean"}
    )


def test_the_space_is_the_params_with_the_command_lines_sweeps_and_its_fixed_values():
    search = _search(**{"model.lam": "interval(0.05, 0.5)", "freq": "choice(dct, dct_abs)"})
    overrides = [
        "search=smoke",
        "model.lam=0.3",
        "train.lr=tag(log, interval(1e-4, 1e-2))",
        "fewshot.k=range(0,9,4)",
    ]
    space = build_space(
        search, [*overrides, "data.root=/d", "domain=C", "model.taps=choice(groups,[1,3])"], "C"
    )
    assert space.params == {
        "freq": CategoricalDistribution(["dct", "dct_abs"]),
        "train.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "fewshot.k": IntDistribution(0, 8, step=4),
        "model.taps": CategoricalDistribution(["groups", "[1,3]"]),
    }
    assert space.fixed == ("search=smoke", "model.lam=0.3", "data.root=/d") and space.domains == ("C",)
    assert param_overrides({"model.lam": 0.25, "model.taps": "[1,3]", "model.adapters": False}) == [
        "model.lam=0.25",
        "model.taps=[1,3]",
        "model.adapters=false",
    ]
    assert identity(OmegaConf.merge(search, {"direction": "maximize"}), space)["overrides"] == [
        "data.root=/d",
        "model.lam=0.3",
        "search=smoke",
    ]


@pytest.mark.parametrize(
    "params, overrides, expected",
    [
        ({"model.lam": "0.3"}, [], "search.params: model.lam=0.3 is not a search parameter"),
        ({"model.lam": "choice(0.1"}, [], "search.params: no viable alternative"),
        ({"freq": "choice(dct)"}, ["domain=A,C"], "expected search.domains=[A,C]"),
        ({"freq": "choice(dct,fft)"}, ["freq=dct"], "nothing to search: search.params is empty or the"),
        ({}, [], "nothing to search"),
    ],
)
def test_a_space_that_is_not_one_is_refused_in_one_line(params, overrides, expected):
    with pytest.raises(SearchError, match=expected.replace("[", r"\[").replace("(", r"\(")) as found:
        build_space(_search(**params), overrides, "C")
    assert "\n" not in str(found.value)


def test_a_grid_takes_discrete_parameters_only():
    space = build_space(_search(**{"freq": "choice(dct, fft)", "fewshot.k": "range(1,5,2)"}), [], "C")
    assert space.grid() == {"freq": ["dct", "fft"], "fewshot.k": [1, 3]} and space.size() == 4
    continuous = build_space(_search(**{"model.lam": "interval(0.1, 0.5)"}), [], "C")
    with pytest.raises(SearchError, match="search.sampler=grid needs discrete parameters; model.lam"):
        continuous.grid()


@pytest.mark.parametrize(
    "objective, allowed",
    [
        ("dev/acc_fa1_cold", True),
        (["dev/acc_fa1_cold", "dev/auroc"], True),
        ("test/auroc_cold", False),
        ("auroc_cold", False),  # the test part's metrics keep their plain names
        (["dev/acc_fa1_cold", "acc_fa1"], False),
        ("dev/", False),
    ],
)
def test_the_objective_is_a_dev_metric(objective, allowed):
    cfg = OmegaConf.merge(compose("search=smoke"), {"search": {"objective": objective}})
    if allowed:
        validate(cfg)
        return
    with pytest.raises(
        ConfigError, match=r"^search\.objective=.* is not allowed; expected a metric of the dev"
    ):
        validate(cfg)


def _job(folder: Path, status: str = "FINISHED", **metrics) -> Path:
    folder.mkdir(parents=True)
    write_json(folder / "run.json", {"status": status, "reason": "boom" if status != "FINISHED" else None})
    undefined = {k: "one class" for k, v in metrics.items() if v is None}
    write_json(folder / "metrics.json", {"metrics": metrics, "undefined": undefined, "random_init": True})
    return folder


def test_a_trials_domains_make_its_objective_values_and_a_failure_is_its_reason(tmp_path):
    a = _job(tmp_path / "0", **{"dev/acc": 0.6, "dev/auroc": 0.9})
    c = _job(tmp_path / "1", **{"dev/acc": 0.8, "dev/auroc": 0.7})
    folders, metrics = {"A": a, "C": c}, ("dev/acc", "dev/auroc")
    assert trial_outcome(folders, metrics, "mean").values == pytest.approx([0.7, 0.8])
    assert trial_outcome(folders, metrics, "min").values == pytest.approx([0.6, 0.7])
    each = trial_outcome(folders, metrics, "each")
    assert each.values == pytest.approx([0.6, 0.8, 0.9, 0.7]) and each.attrs["random_init"] is True
    search = OmegaConf.create({"objective": list(metrics), "aggregate": "each"})
    assert objective_names(search, ["A", "C"]) == ["dev/acc A", "dev/acc C", "dev/auroc A", "dev/auroc C"]
    failed = _job(tmp_path / "2", status="FAILED", **{"dev/acc": 0.5})
    outcome = trial_outcome({"A": a, "C": failed}, ("dev/acc",), "mean")
    assert outcome.values is None and outcome.reason == "job of domain C failed: boom"
    undefined = _job(tmp_path / "3", **{"dev/acc": None})
    assert (
        "dev/acc is undefined on domain C: one class"
        in trial_outcome({"C": undefined}, ("dev/acc",), "mean").reason
    )
    with pytest.raises(SearchError, match="dev/acx is not a metric this job logs.*expected one of: dev/acc"):
        trial_outcome({"C": a}, ("dev/acx",), "mean")


def test_a_trial_whose_job_was_folded_takes_the_value_of_the_job_it_repeats(tmp_path):
    """A sampler may propose a point again: its job is folded into the earlier one (SKIPPED, not run) and
    the trial's value is that job's, not a failure."""
    first = _job(tmp_path / "0", **{"dev/acc": 0.6})
    (tmp_path / "4").mkdir()
    folded = {"job": "0", "job_folder": str(first), "run_name": "C-feclip·dct", "axes": []}
    write_json(tmp_path / "4" / "run.json", {"status": "SKIPPED", "reason": "same", "folded_into": folded})
    outcome = trial_outcome({"C": tmp_path / "4"}, ("dev/acc",), "mean")
    assert outcome.values == pytest.approx([0.6]) and outcome.reason is None


@pytest.mark.parametrize("space", SPACES)
def test_every_shipped_space_passes_its_checks(space, tmp_path):
    found = planned(f"search={space}", f"search.dir={tmp_path / 'search'}")
    assert found.space.params and found.search.objective.startswith("dev/")
    assert found.sweep_dir == tmp_path / "search" / "trials"


def test_a_parameter_value_no_job_can_run_with_is_refused_by_name(tmp_path):
    where = f"search.dir={tmp_path / 'search'}"
    with pytest.raises(
        SearchError, match=r"search parameter model.lam=1.5 cannot run: model.lam=1.5 is not allowed"
    ):
        planned("search=smoke", where, "model.lam=interval(0.1, 1.5)")
    with pytest.raises(
        SearchError, match=r"search parameter freq=dctt cannot run: .*Could not find 'freq/dctt'"
    ):
        planned("search=smoke", where, "freq=choice(dct, dctt)")
    with pytest.raises(SearchError, match="tracking.skip_finished=true is not allowed with a search"):
        planned("search=smoke", where, "tracking.skip_finished=true")
    with pytest.raises(SearchError, match="search.stage=confirm: no study 'smoke'"):
        planned("search=smoke", where, "search.stage=confirm")


def test_a_study_is_resumed_only_by_its_own_search_and_by_one_sweep_at_a_time(tmp_path):
    where = f"search.dir={tmp_path / 'search'}"
    first = planned("search=smoke", where)
    open_study(first.folder, "smoke", first.identity(), directions=["maximize"])
    assert planned("search=smoke", where, "search.n_trials=9", "search.sampler=random").folder == first.folder
    with pytest.raises(SearchError, match=r"holds the study 'smoke' of another search \(overrides: "):
        planned("search=smoke", where, "freq=dct")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_json(
            first.folder / LOCK_FILE, {"pid": sleeper.pid, "host": socket.gethostname(), "status": "RUNNING"}
        )
        with pytest.raises(SearchError, match=f"is used by a running search \\(pid {sleeper.pid} "):
            planned("search=smoke", where)
    finally:
        sleeper.kill()
        sleeper.wait()
    planned("search=smoke", where)  # a lock left by a dead process is taken over
