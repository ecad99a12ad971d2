"""What a search leaves beside its trials, in `<hydra.sweep.dir>/study/` and on the sweep's parent run
(artifacts under `study/`): `trials.csv` (one row per trial: state, objective values, parameters,
per-domain values, failure, job runs), `best.md` (the best trial or the Pareto front, its config as a
ready-to-run override line, the confirm command) and Optuna's matplotlib figures (`optimization_history`,
`param_importances`, `pareto_front` for 2-3 objectives). Every number is a dev-part number; random-init
trials say so."""

from __future__ import annotations

import json
import shlex
import sys
import warnings
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt  # Optuna's figures are pyplot figures: each is closed once saved
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization import matplotlib as optuna_plots

from feclip.cli import override_key
from feclip.files import atomic_path, write_text
from feclip.jobs.common import RANDOM_INIT_NOTE
from feclip.search.plan import Plan
from feclip.search.space import param_overrides
from feclip.search.study import STUDY_FILE, best_trials, pick
from feclip.tracking.sweep import parent_file
from feclip.tracking.tracker import client_for, param_key
from feclip.tracking.uris import fast_http, one_line

STUDY_DIR = "study"


def trials_table(study: optuna.Study, names: list[str]) -> pd.DataFrame:
    """One row per trial: number, state, objective values (`names`), `param.<key>`, per-domain values,
    seconds, failure, random_init, deployable, overrides, the jobs' MLflow runs."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else None
        rows.append(
            {
                "trial": t.number,
                "state": t.state.name,
                **dict(zip(names, t.values or [], strict=False)),  # a failed trial has none
                **{f"param.{k}": v for k, v in t.params.items()},
                **{k: v for k, v in attrs.get("domain_values", {}).items() if k not in names},
                "seconds": seconds,
                "failure": attrs.get("failure", ""),
                "random_init": attrs.get("random_init"),
                "deployable": attrs.get("deployable"),
                "overrides": " ".join(param_overrides(t.params)),
                "runs": " ".join(str(j.get("run_id")) for j in attrs.get("jobs", {}).values()),
            }
        )
    return pd.DataFrame(rows)


def run_line(p: Plan, trial: FrozenTrial) -> str:
    """The trial's config as a ready-to-run command: the fixed overrides (not the search's own) + its
    parameters, on the search's domains."""
    fixed = [o for o in p.space.fixed if override_key(o).split(".")[0] != "search"]
    words = [*fixed, *param_overrides(trial.params), f"domain={','.join(p.space.domains)}"]
    return f"feclip run {'-m ' if len(p.space.domains) > 1 else ''}{shlex.join(words)}"


def _values(names: list[str], trial: FrozenTrial) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in zip(names, trial.values, strict=True))


def counts(study: optuna.Study) -> str:
    """`6 trials (5 complete, 1 failed)`."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    words = {TrialState.FAIL: "failed"}
    found = {words.get(s, s.name.lower()): states.count(s) for s in TrialState if states.count(s)}
    return f"{len(states)} trials ({', '.join(f'{n} {s}' for s, n in found.items())})"


def best_lines(study: optuna.Study, p: Plan) -> list[str]:
    """best.md: the best trial (or the Pareto front), its run line, the confirm command, the counts."""
    front, names = best_trials(study), p.names()
    search = p.search
    flag = any(t.user_attrs.get("random_init") for t in study.get_trials(deepcopy=False))
    lines = [f"# Search {search.name}: {counts(study)}", ""]
    lines += [f"**{RANDOM_INIT_NOTE}**", ""] if flag else []
    lines += [
        f"Selected on the dev part: {', '.join(names)} ({search.direction}, sampler {search.sampler}). The "
        "test part is read only by the confirm stage.",
        "",
    ]
    if not front:
        return [*lines, "No trial completed: see trials.csv (failure)."]
    picked = pick(study)
    for trial in front:
        mark = " (picked for the confirm stage)" if len(front) > 1 and trial.number == picked.number else ""
        lines += [f"## Trial {trial.number}{mark}: {_values(names, trial)}", ""]
        if not trial.user_attrs.get("deployable", True):
            lines += ["NOT DEPLOYABLE: its decisions read the labels of the images it scores", ""]
        lines += ["```bash", run_line(p, trial), "```", ""]
    confirm = search.confirm
    seeds = ", ".join(map(str, confirm.seeds))
    domains = ", ".join(confirm.domains or p.space.domains)
    lines += [
        f"Claim on test: trial {picked.number} and the baseline, seeds {seeds} on {domains}; paired Δ tables "
        "in the confirm sweep's report/report.md:",
        "",
        "```bash",
        p.command("confirm"),
        "```",
        "",
        f"Study: {p.folder / STUDY_FILE} (Optuna RDB storage; the same command resumes the search).",
    ]
    return lines


def _save(ax, path: Path, caption: str) -> Path:
    figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    if caption:
        figure.suptitle(caption, fontsize=8)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return path


def _figure(plot, path: Path, caption: str, name: str) -> list[Path]:
    """[path] of one Optuna figure (`plot()` -> axes), or [] with one note when the study cannot give it yet
    (one trial, one parameter value)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning, matplotlib's layout notes
            return [_save(plot(), path, caption)]
    except (ValueError, RuntimeError, ZeroDivisionError) as error:
        plt.close("all")
        print(f"feclip: note: no {path.stem} figure for {name}: {one_line(error, 160)}", file=sys.stderr)
        return []


def figures(study: optuna.Study, names: list[str], out: Path, caption: str) -> list[Path]:
    """Optuna's optimisation history and parameter importances, one per objective (suffix _<i> when there
    are several), and the Pareto front of 2 or 3 objectives."""
    paths = []
    suffix = (lambda i: f"_{i}") if len(names) > 1 else (lambda i: "")
    for i, name in enumerate(names):
        # one objective: Optuna's own target (its history then draws the best value so far)
        kwargs = {"target": (lambda t, i=i: t.values[i])} if len(names) > 1 else {}
        kwargs["target_name"] = name
        for kind, plot in (
            ("optimization_history", optuna_plots.plot_optimization_history),
            ("param_importances", optuna_plots.plot_param_importances),
        ):
            paths += _figure(partial(plot, study, **kwargs), out / f"{kind}{suffix(i)}.png", caption, name)
    if len(names) in (2, 3):
        front = partial(optuna_plots.plot_pareto_front, study, target_names=names)
        paths += _figure(front, out / "pareto_front.png", caption, ", ".join(names))
    return paths


def write_study(study: optuna.Study, p: Plan) -> list[str]:
    """Write `<sweep dir>/study/`, log it on the parent run, and return the search's closing lines."""
    out = p.sweep_dir / STUDY_DIR
    out.mkdir(parents=True, exist_ok=True)
    names = p.names()
    write_text(out / "trials.csv", trials_table(study, names).to_csv(index=False))
    write_text(out / "best.md", "\n".join(best_lines(study, p)) + "\n")
    flag = any(t.user_attrs.get("random_init") for t in study.get_trials(deepcopy=False))
    shown = figures(study, names, out, RANDOM_INIT_NOTE if flag else "")
    log_on_parent(p.sweep_dir, out, study, names)
    lines = [f"feclip search {p.search.name}: {counts(study)} in {p.folder / STUDY_FILE}"]
    front = best_trials(study)
    if front:
        picked = pick(study)
        note = " (random-init backbone: tests the pipeline)" if flag else ""
        lines += [
            f"  best: trial {picked.number}: {_values(names, picked)}{note}",
            f"  run it: {run_line(p, picked)}",
        ]
        lines += [f"  claim on test: {p.command('confirm')}"]
    lines += [f"  study: {out} (trials.csv, best.md, {len(shown)} figures)"]
    return lines


def log_on_parent(sweep_dir: Path, out: Path, study: optuna.Study, names: list[str]) -> None:
    """The study folder as the parent run's `study/` artifacts, the best values as its `search/` metrics;
    a store that cannot be reached is one line (the folder keeps everything)."""
    path = parent_file(sweep_dir)
    if not path.exists():
        return
    record = json.loads(path.read_text())
    front = best_trials(study)
    try:
        with fast_http(5):
            client = client_for(record["tracking_uri"])
            client.log_artifacts(record["run_id"], str(out), STUDY_DIR)
            if front:
                picked = pick(study)
                for name, value in zip(names, picked.values, strict=True):
                    client.log_metric(record["run_id"], param_key(f"search/best {name}"), value)
                overrides = " ".join(param_overrides(picked.params))
                client.set_tag(record["run_id"], "search.best_overrides", overrides)
    except Exception as error:  # the store may be gone: the study is in its folder
        print(f"feclip: could not log the study on the parent run ({one_line(error, 160)})", file=sys.stderr)
