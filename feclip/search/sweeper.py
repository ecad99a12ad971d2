"""The search sweep (`feclip run -m search=<space>`; the space selects `hydra/sweeper=search`): Optuna asks
for trials, the configured Hydra launcher runs each trial's jobs (one per domain of `search.domains`; basic:
one after another, joblib: in parallel), the job folders give the objective, the study on disk keeps it.

    search.stage=trials   the search: selects on the dev part (`search.objective`: dev/<metric>)
    search.stage=confirm  the picked trial and the baseline on the test part, search.confirm.seeds x domains:
                          the only test numbers a search produces (the sweep report's paired Δ tables)

A trial's jobs are numbered trial x domains + domain index, so its folders are `<hydra.sweep.dir>/<job>`
however often the sweep is resumed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from feclip import cli
from feclip.errors import FeclipError
from feclip.search import record
from feclip.search.plan import Plan, plan
from feclip.search.space import DEV_PREFIX, SAMPLERS, SearchError, objective_metrics, param_overrides
from feclip.search.study import load_study, n_done, open_study, pick, search_lock, stale_trials
from feclip.search.trials import job_record, trial_outcome
from feclip.tracking.local import SWEEP_FILE, read_json, write_json


def sweep(config: DictConfig, launcher) -> None:
    """The search or its confirm stage, inside the error boundary: a `FeclipError` is one line and exit 2
    (Hydra would print a traceback and exit 1)."""
    try:
        found = plan(config)
        if found.search.stage == "confirm":
            confirm(found, launcher)
        else:
            trials(found, launcher)
    except FeclipError as error:
        raise SystemExit(cli.report(error, "feclip")) from None


def update_sweep(sweep_dir: Path, **fields) -> None:
    """Merge `fields` into the sweep's record (sweep.json, written by the MLflow sweep callback)."""
    path = sweep_dir / SWEEP_FILE
    if path.exists():
        write_json(path, {**read_json(path), **fields})


def trials(p: Plan, launcher) -> None:
    """Run the search up to `p.target()` trials: first the trials a stopped sweep left running, then new ones,
    `search.n_jobs` at a time; then write the study record and print where it is."""
    with search_lock(p.folder, p.search.name, p.identity()):
        directions = [p.search.direction] * len(p.names())
        study = open_study(p.folder, p.search.name, p.identity(), directions=directions)
        study.set_metric_names(p.names())
        sampler = SAMPLERS.get_entry(p.search.sampler)
        grid = p.space.grid() if sampler.discrete else None
        # seeded by the trials so far: a resumed sweep does not draw its first points again
        study.sampler = sampler.build(grid, p.search.seed + len(study.trials), p.search.n_jobs)
        rerun = resume(p, study)
        todo = max(0, p.target() - n_done(study) - len(rerun))
        update_sweep(
            p.sweep_dir, jobs=(n_done(study) + len(rerun) + todo) * len(p.space.domains), stage="trials"
        )
        while rerun or todo:
            batch, rerun = rerun[: p.search.n_jobs], rerun[p.search.n_jobs :]
            new = min(todo, p.search.n_jobs - len(batch))
            todo -= new
            run_batch(p, launcher, study, batch + [study.ask(p.space.params) for _ in range(new)])
        print("\n".join(record.write_study(study, p)))


def _job_number(trial_number: int, index: int, n_domains: int) -> int:
    return trial_number * n_domains + index


def resume(p: Plan, study: optuna.Study) -> list[optuna.trial.Trial]:
    """The trials a stopped sweep left RUNNING: told from their folders when every job finished there (with
    these overrides), else returned to run again."""
    rerun, n = [], len(p.space.domains)
    for frozen in stale_trials(study):
        trial = optuna.trial.Trial(study, frozen._trial_id)  # a live handle on the stored trial
        folders = {
            d: p.sweep_dir / str(_job_number(frozen.number, i, n)) for i, d in enumerate(p.space.domains)
        }
        overrides = param_overrides(frozen.params)
        records = [job_record(f) for f in folders.values()]
        if all(
            r["status"] == "FINISHED" and r["overrides"] == p.job_overrides(overrides, d)
            for r, d in zip(records, folders, strict=True)
        ):
            tell(p, study, trial, folders)
        else:
            rerun.append(trial)
    return rerun


def _consecutive(trials: list[optuna.trial.Trial]) -> list[list[optuna.trial.Trial]]:
    """The trials in runs of consecutive numbers (one launch each: job numbers follow trial numbers)."""
    runs: list[list[optuna.trial.Trial]] = []
    for trial in sorted(trials, key=lambda t: t.number):
        if runs and runs[-1][-1].number == trial.number - 1:
            runs[-1].append(trial)
        else:
            runs.append([trial])
    return runs


def run_batch(p: Plan, launcher, study: optuna.Study, batch: list[optuna.trial.Trial]) -> None:
    """Launch the jobs of `batch` (each trial x each domain) and tell each trial its outcome."""
    domains = p.space.domains
    for run in _consecutive(batch):
        jobs = [p.job_overrides(param_overrides(t.params), d) for t in run for d in domains]
        returns = launcher.launch(jobs, initial_job_idx=_job_number(run[0].number, 0, len(domains)))
        folders = [Path(str(r.hydra_cfg.hydra.runtime.output_dir)) for r in returns]
        n = len(domains)
        for i, trial in enumerate(run):
            tell(p, study, trial, dict(zip(domains, folders[i * n : (i + 1) * n], strict=True)))


def tell(p: Plan, study: optuna.Study, trial: optuna.trial.Trial, folders: dict[str, Path]) -> None:
    """Record a trial's outcome (values, or FAIL with the reason) and what the study keeps beside it; an
    objective no job logs fails the trial and stops the search."""
    try:
        outcome = trial_outcome(folders, objective_metrics(p.search.objective), p.search.aggregate)
    except SearchError as error:
        trial.set_user_attr("failure", str(error))
        study.tell(trial, state=TrialState.FAIL)
        raise
    for key, value in {**outcome.attrs, "overrides": " ".join(param_overrides(trial.params))}.items():
        trial.set_user_attr(key, value)
    if outcome.values is None:
        trial.set_user_attr("failure", outcome.reason)
        study.tell(trial, state=TrialState.FAIL)
        print(f"feclip search: trial {trial.number} failed: {outcome.reason}", file=sys.stderr)
        return
    study.tell(trial, outcome.values)
    values = ", ".join(f"{name} {v:.4f}" for name, v in zip(p.names(), outcome.values, strict=True))
    print(f"feclip search: trial {trial.number}: {values}")


def confirm(p: Plan, launcher) -> None:
    """Run the picked trial and the baseline (the base config with search.confirm.baseline) on each of
    search.confirm.domains x seeds; the sweep report compares them on the test part."""
    study = load_study(p.folder, p.search.name, p.identity())
    best = pick(study)
    fixed = [o for o in p.space.fixed if cli.override_key(o) != "seed"]
    candidates = [[*fixed, *p.search.confirm.baseline], [*fixed, *param_overrides(best.params)]]
    domains = p.search.confirm.domains or p.space.domains
    jobs = [
        [*overrides, f"seed={seed}", f"domain={domain}"]
        for overrides in candidates
        for seed in p.search.confirm.seeds
        for domain in domains
    ]
    compare = OmegaConf.to_container(p.config.compare, resolve=True)
    claimed = [m[len(DEV_PREFIX) :] for m in objective_metrics(p.search.objective)]
    compare["metrics"] = list(dict.fromkeys([*claimed, *compare["metrics"]]))
    update_sweep(p.sweep_dir, jobs=len(jobs), stage="confirm", compare=compare)
    chosen = " ".join(param_overrides(best.params))
    print(
        f"feclip search {p.search.name}: trial {best.number} ({chosen}) against the baseline on the test "
        f"part: {len(jobs)} jobs"
    )
    launcher.launch(jobs, initial_job_idx=0)
