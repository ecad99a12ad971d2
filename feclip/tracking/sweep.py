"""The parent run of a Hydra multirun (`MlflowSweepCallback`, configured in `hydra.callbacks`): it creates the
parent run and writes its id to `<sweep dir>/mlflow_parent.json`; jobs, in any process or on any node, find it
with `parent_run_id_for_sweep`. No job relies on in-process state. At the end, `end_sweep` counts the jobs
from their folders, ends the parent run and prints the failed jobs; `sweep_exit_code` is run.py's exit
code."""

from __future__ import annotations

import atexit
import functools
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra.utils
import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from feclip import progress
from feclip.errors import FeclipError
from feclip.evaluation.figures import write_comparison
from feclip.tracking.local import RUN_FILE, SWEEP_FILE, job_folders, read_json, write_json
from feclip.tracking.report import (
    anchors_for,
    comparison,
    comparison_lines,
    folder_runs,
    same_images,
    variant_domain_table,
    write_report,
)
from feclip.tracking.tracker import MAX_TAG_LENGTH, client_for, experiment_id, truncate
from feclip.tracking.uris import (
    TrackingError,
    check_tracking_uri,
    fast_http,
    one_line,
    resolve_tracking_uri,
    run_url,
    ui_command,
)

PARENT_FILE = "mlflow_parent.json"
STATUSES = ("finished", "failed", "killed", "skipped")
REPORT_DIR = (
    "report"  # <sweep dir>/report: the sweep's variant x domain tables (md + csv), also on the parent
)
STUDY_METRICS = (
    "auroc",
    "auroc_cold",
    "auroc_warm",
    "auroc_cross",
    "acc_val",
    "acc_val_cold",
    "acc_val_warm",
    "acc_fa1",
    "acc_fa1_cold",
    "acc_oracle",
    "acc_oracle_cold",
    "tpr_at_fpr1",
    "gate_acc",
)
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def parent_file(sweep_dir: str | Path) -> Path:
    return Path(sweep_dir) / PARENT_FILE


def parent_run_id_for_sweep(sweep_dir: str | Path) -> str | None:
    """The parent run id written by `MlflowSweepCallback` into `<sweep_dir>/mlflow_parent.json`, else None."""
    path = parent_file(sweep_dir)
    if not path.exists():
        return None
    try:
        return str(json.loads(path.read_text())["run_id"])
    except (ValueError, KeyError, TypeError) as error:
        raise TrackingError(
            f"{path} is not a parent-run record ({error!r}); expected JSON with 'run_id'"
        ) from None


def sweep_id_for(sweep_dir: str | Path) -> str:
    """Short, readable id of a sweep folder: its last two path parts (`2025-11-28/23-50-01`)."""
    return "/".join(Path(sweep_dir).parts[-2:])


def sweep_dir_of(config: DictConfig) -> Path:
    """Absolute, normalised `hydra.sweep.dir` (resolved from the same config object, so `${now:}` matches the
    jobs'; normalised as Hydra normalises a job's `output_dir`, so `../x` names a job's folder one way)."""
    return Path(os.path.abspath(Path(str(config.hydra.runtime.cwd)) / str(config.hydra.sweep.dir)))


def _tracking_settings(config: DictConfig) -> tuple[bool, str, str]:
    """(enabled, resolved uri, experiment) from the composed `tracking.*` keys."""
    experiment = OmegaConf.select(config, "tracking.experiment", default=None)
    if experiment is None:
        raise TrackingError("config key tracking.experiment is missing; MlflowSweepCallback needs tracking.*")
    enabled = bool(OmegaConf.select(config, "tracking.enabled", default=True))
    uri = resolve_tracking_uri(
        OmegaConf.select(config, "tracking.uri", default=None), config.hydra.runtime.cwd
    )
    return enabled, uri, str(experiment)


def count_jobs(config: DictConfig) -> int | None:
    """How many jobs Hydra's basic sweeper launches (`hydra.sweeper.params` + the sweep overrides), or None
    for another sweeper."""
    return progress.count_jobs(
        OmegaConf.select(config, "hydra.overrides.task", default=[]) or [],
        OmegaConf.select(config, "hydra.sweeper.params", default=None),
        str(OmegaConf.select(config, "hydra.sweeper._target_", default="BasicSweeper")),
    )


class MlflowSweepCallback(Callback):
    """Hydra callback: one MLflow parent run per multirun; child jobs nest under it via `mlflow.parentRunId`.

    The run id travels through `<hydra.sweep.dir>/mlflow_parent.json`, so jobs in worker processes or SLURM
    nodes find it; `<sweep dir>/sweep.json` records the sweep (id, job count, overrides) for `sync`. At the
    end the parent carries the counts of finished, failed, killed, skipped and never-started jobs (read from
    the job folders, so a lost store does not lose them) and the closing block lists the failed jobs. If the
    sweep aborts (Ctrl-C, SIGTERM) Hydra skips `on_multirun_end`; an exit hook then ends the parent FAILED.
    """

    def __init__(self) -> None:
        self._exit_hook = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if refused(config):
            return
        enabled, uri, experiment = _tracking_settings(config)
        sweep_dir = sweep_dir_of(config)
        sweep_id = sweep_id_for(sweep_dir)
        overrides = [str(o) for o in OmegaConf.select(config, "hydra.overrides.task", default=[]) or []]
        sweep_dir.mkdir(parents=True, exist_ok=True)
        started = time.time()
        record = {
            "sweep_id": sweep_id,
            "key": uuid.uuid4().hex,
            "jobs": count_jobs(config),
            "started": started,
        }
        compare = OmegaConf.to_container(config.compare) if "compare" in config else None
        record |= {"overrides": overrides, "experiment": experiment, "compare": compare}
        write_json(sweep_dir / SWEEP_FILE, record)
        self._exit_hook = functools.partial(_end_aborted_sweep, sweep_dir)
        atexit.register(self._exit_hook)
        records = functools.partial(job_records, sweep_dir)
        progress.start_board(
            sweep_dir, record["jobs"], started=started, swept=swept_keys(config), records=records
        )
        if not enabled:
            return
        check_tracking_uri(uri)
        client = client_for(uri)
        tags = parent_tags(sweep_id, sweep_dir, overrides, record["key"])
        run = client.create_run(experiment_id(client, experiment), run_name=f"sweep {sweep_id}", tags=tags)
        record = {
            "run_id": run.info.run_id,
            "tracking_uri": uri,
            "experiment": experiment,
            "sweep_id": sweep_id,
        }
        parent_file(sweep_dir).write_text(json.dumps(record, indent=2))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None
        progress.stop_board()
        end_sweep(sweep_dir_of(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """In the job's process: its line on the sweep's board, when one draws (`feclip.progress`)."""
        if str(OmegaConf.select(config, "hydra.mode", default="")).endswith("MULTIRUN"):
            progress.job_started(
                sweep_dir_of(config),
                str(config.hydra.job.num),
                folder=str(config.hydra.runtime.output_dir),
                overrides=[str(o) for o in config.hydra.overrides.task],
            )

    def on_job_end(self, config: DictConfig, **kwargs: Any) -> None:
        progress.finish_job()


def refused(config: DictConfig) -> bool:
    """Whether the configured sweeper refuses this sweep (its optional `check(config)` raises a
    `FeclipError`): then nothing is written here, and the sweeper says why in one line."""
    target = OmegaConf.select(config, "hydra.sweeper._target_", default=None)
    check = getattr(hydra.utils.get_class(target), "check", None) if target else None
    try:
        if check is not None:
            check(config)
    except FeclipError:
        return True
    return False


def job_records(sweep_dir: Path) -> dict[str, dict]:
    """The run.json records of a sweep's job folders, by folder (what its board counts)."""
    return {str(folder): read_json(folder / RUN_FILE) for folder in job_folders(sweep_dir)}


def swept_keys(config: DictConfig) -> list[str]:
    """The config keys a sweep varies (`domain`, `freq`): its sweep overrides and `hydra.sweeper.params`."""
    overrides = OmegaConf.select(config, "hydra.overrides.task", default=[])
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None)
    try:
        parsed = progress.parsed_sweep(overrides, params)
    except Exception:  # Hydra reports a bad override itself
        return []
    return sorted({o.get_key_element() for o in parsed if o.is_sweep_override()})


def parent_tags(sweep_id: str, sweep_dir: Path, overrides: list[str], key: str) -> dict[str, str]:
    return {
        "sweep_id": sweep_id,
        "feclip.parent": "true",
        "feclip.sweep_key": key,
        "sweep_dir": str(sweep_dir),
        "sweep_overrides": truncate(" ".join(overrides), MAX_TAG_LENGTH),
        **git_tags(),
    }


def git_tags() -> dict[str, str]:
    """The commit the code ran at (`mlflow.source.git.commit`) and whether the tree had changes; {} outside
    a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        commit, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"mlflow.source.git.commit": commit, "feclip.git_dirty": str(bool(changes)).lower()}


@dataclass
class Study:
    """A sweep's finished HDMAP jobs: `tables` {metric: variant x domain table}, `runs` one row per job (None
    when no HDMAP job finished, and then `tables` is empty), `compared` its Δ tables."""

    tables: dict = field(default_factory=dict)
    runs: pd.DataFrame | None = None
    compared: list = field(default_factory=list)


def sweep_record(sweep_dir: str | Path) -> dict:
    """The sweep's sweep.json ({} without one)."""
    path = Path(sweep_dir) / SWEEP_FILE
    return read_json(path) if path.exists() else {}


def dev_only(record: dict) -> bool:
    """A search's trials (sweep.json `record` with `stage: trials`) are reported on the dev part only: the
    test part is read by its confirm stage."""
    return record.get("stage") == "trials"


def study(sweep_dir: Path, record: dict) -> Study:
    """The study of the sweep's job folders, written to `<sweep dir>/report` (report.md + one CSV per metric +
    runs.csv + comparison.png) when there is one: each study metric on the test part beside its dev part
    (`dev/<metric>`), the Δ tables of the sweep's `compare` settings, and the figure of every variant per
    domain with its interval (`figures.write_comparison`); a search's trials: the dev part only, no Δ
    table. `record`: the sweep's sweep.json."""
    runs = folder_runs(sweep_dir)
    runs = runs[runs["domain"].notna() & (runs["domain"] != "-")]
    pairs = [(f"dev/{m}",) if dev_only(record) else (m, f"dev/{m}") for m in STUDY_METRICS]
    metrics = [name for pair in pairs for name in pair if name in runs.columns and runs[name].notna().any()]
    if runs.empty or not metrics:
        return Study()
    tables = {metric: variant_domain_table(runs, metric) for metric in metrics}
    for table in tables.values():
        table.attrs["experiment"] = sweep_id_for(sweep_dir)
    compared = [] if dev_only(record) else comparisons(runs, record.get("compare"))
    write_report(tables, Path(sweep_dir) / REPORT_DIR, runs, compared)
    write_comparison(Path(sweep_dir) / REPORT_DIR, tables)
    return Study(tables, runs, compared)


def _job_number(folder: str) -> int:
    name = Path(folder).name
    return int(name) if name.isdigit() else 1 << 30


def comparisons(runs: pd.DataFrame, settings: dict | None) -> list[pd.DataFrame]:
    """The Δ tables of the sweep's `compare` settings (sweep.json), on the runs of the first job's eval_set
    per domain; none with one variant; a table that cannot be made is left out with one printed line."""
    settings = settings or {"metrics": []}
    runs, _ = same_images(runs)
    if runs["variant"].nunique() < 2:
        return []
    baseline = settings.get("baseline") or runs["variant"].iloc[runs["folder"].map(_job_number).argmin()]
    tables = []
    for metric in settings["metrics"]:
        try:
            tables.append(comparison(runs, metric, baseline, n=settings.get("bootstrap", 2000)))
        except FeclipError as error:
            print(f"feclip: no Δ table for {metric}: {error}", file=sys.stderr)
    return tables


@dataclass
class SweepOutcome:
    """Job counts of one sweep, from its job folders (`run.json` statuses) and the expected job count."""

    counts: dict[str, int]
    failed: list[dict]  # run.json records of the failed and killed jobs
    folded: list[dict] = field(default_factory=list)  # run.json records of the jobs folded into another

    @property
    def ok(self) -> bool:
        return not self.failed and self.counts.get("never_started", 0) == 0


LAST_SWEEP: list[SweepOutcome] = []  # the outcome of this process's last sweep (run.py's exit code)


def sweep_outcome(sweep_dir: Path) -> SweepOutcome:
    records = [read_json(folder / RUN_FILE) for folder in job_folders(sweep_dir)]
    counts = {status: sum(r.get("status") == status.upper() for r in records) for status in STATUSES}
    counts["running"] = sum(r.get("status") == "RUNNING" for r in records)  # a job that died hard
    expected = sweep_record(sweep_dir).get("jobs")
    counts["never_started"] = max(0, expected - len(records)) if expected is not None else 0
    failed = [r for r in records if r.get("status") in ("FAILED", "KILLED", "RUNNING")]
    return SweepOutcome(counts, failed, [r for r in records if r.get("folded_into")])


def folded_line(sweep_id: str, folded: list[dict]) -> str:
    """One line naming the grid points a sweep folded (`feclip.jobs.common.fold`): each job, the overrides
    its method does not read, and the job it is the same as."""
    points = [
        f"job {Path(r['job_folder']).name} [{' '.join(r['folded_into']['axes']) or 'same config'}] = job "
        f"{r['folded_into']['job']}"
        for r in folded
    ]
    return (
        f"feclip sweep {sweep_id}: folded {len(points)} grid point{'s' * (len(points) != 1)}, not run: the "
        f"same computation as another job (the method does not read the overrides in brackets): "
        f"{', '.join(points)}"
    )


def _end_aborted_sweep(sweep_dir: Path) -> None:
    """Exit hook: end a parent run left RUNNING by an aborted sweep; never raise at interpreter exit."""
    try:
        progress.stop_board()
        end_sweep(sweep_dir, aborted=True)
    except Exception as error:
        print(f"feclip: could not end the sweep's parent run: {one_line(error, 200)}", file=sys.stderr)


def end_sweep(sweep_dir: str | Path, aborted: bool = False) -> SweepOutcome:
    """Count the jobs, end the parent run (when tracked and still running), print the closing lines: the
    counts and the sweep's duration, the AUROC table (`study_summary`, at most 100 columns), the parent run
    and once how to serve the UI, then one line per failed job (the last lines)."""
    outcome = sweep_outcome(Path(sweep_dir))
    LAST_SWEEP[:] = [outcome]
    record = sweep_record(sweep_dir)
    found = study(Path(sweep_dir), record)
    status, url, command = end_parent_run(sweep_dir, outcome, aborted=aborted)
    counts = ", ".join(f"{n} {name.replace('_', '-')}" for name, n in outcome.counts.items() if n)
    started = record.get("started")
    took = f" in {progress.duration(time.time() - started)}" if started else ""
    print(
        f"feclip sweep {sweep_id_for(sweep_dir)}: {counts or 'no jobs'}{took}"
        + (f" (parent run {status})" if status else "")
    )
    if outcome.folded:
        print(folded_line(sweep_id_for(sweep_dir), outcome.folded))
    headline = "dev/auroc" if dev_only(record) else "auroc"
    if headline in found.tables:
        print(study_summary(found.tables[headline], Path(sweep_dir) / REPORT_DIR))
    if record.get("stage") == "confirm":
        print("\n".join(f"  {line}" for table in found.compared for line in comparison_lines(table)))
    if url:
        print(f"  parent run: {url}")
    if command:
        print(f"  serve the UI: {command}")
    for record in outcome.failed:
        overrides = " ".join(record.get("overrides", [])) or "(no overrides)"
        reason = record.get("reason") or record["status"]
        print(f"feclip: failed job {record.get('run_name')} [{overrides}]: {reason}")
    return outcome


TABLE_WIDTH = 100  # columns of the sweep's closing table


def study_summary(table, report_dir: Path, width: int = TABLE_WIDTH) -> str:
    """The sweep's closing table: image AUROC x100 (of the dev part for a search's trials) per variant and
    domain, at most `width` columns (the intervals shortened, then left out, then the variant names shortened
    as needed); the anchor rows, the full intervals and the notes are in report.md."""
    flag = table.attrs.get("random_init", 0)
    part = " (dev part)" if str(table.attrs.get("metric", "")).startswith("dev/") else ""
    note = f" ({flag} of {table.attrs['n_runs']} runs random-init: tests the pipeline)" if flag else ""
    anchors = {anchor.row for anchor in anchors_for(str(table.attrs.get("metric", "auroc")))}
    rows = [row for row in table.index if row not in anchors]
    numbers = table.attrs.get("numbers")
    lines = terminal_table(rows, list(table.columns), numbers, width - 2)
    shown = "mean [95 % interval]" if "[" in "".join(lines[1:]) else "mean"
    left = len(table.index) - len(rows)
    more = f" and {left} published anchor rows" if left else ""
    return "\n".join(
        [
            f"  image AUROC x100{part}, {shown}{note}:",
            *("  " + line for line in lines),
            f"  intervals in full, notes{more}: {report_dir / 'report.md'}",
        ]
    )


def terminal_table(rows: list[str], columns: list[str], numbers, width: int) -> list[str]:
    """Variant x domain lines of at most `width` characters from a table's cell numbers (`cell_numbers`):
    cells `50.9 [37.9, 63.5]`, else `50.9 [38, 64]`, else `50.9`; the variant names shortened last."""
    domains = [c for c in columns if c != "mean"]
    cells = {}
    for cell in [] if numbers is None else numbers.to_dict("records"):
        cells[(cell["variant"], cell["domain"])] = cell
    for style in ("full", "short", "mean"):
        body = []
        for row in rows:
            values = [_terminal_cell(cells.get((row, d)), style) for d in domains]
            means = [cells[(row, d)]["mean"] for d in domains if (row, d) in cells]
            mean = f"{sum(means) / len(means):.1f}" if means else "–"
            if means and len(means) < len(domains):
                mean += f" ({','.join(d for d in domains if (row, d) in cells)})"
            body.append([row, *values, mean])
        header = ["variant", *domains, "mean"]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        spare = width - (sum(widths[1:]) + 2 * (len(widths) - 1))
        if spare >= min(widths[0], 24) or style == "mean":
            widths[0] = max(min(widths[0], spare), 8)
            return [
                "  ".join(
                    [_shorten(line[0], widths[0]).ljust(widths[0])]
                    + [
                        text.rjust(w) if i < len(domains) else text.ljust(w)
                        for i, (text, w) in enumerate(zip(line[1:], widths[1:], strict=True))
                    ]
                ).rstrip()
                for line in [header, *body]
            ]
    return []


def _terminal_cell(cell: dict | None, style: str) -> str:
    if cell is None:
        return "–"
    text = f"{cell['mean']:.1f}"
    if style == "mean" or cell["lo"] != cell["lo"]:  # NaN: no interval
        return text
    if style == "full":
        return f"{text} [{cell['lo']:.1f}, {cell['hi']:.1f}]"
    return f"{text} [{cell['lo']:.0f}, {cell['hi']:.0f}]"


def _shorten(text: str, width: int) -> str:
    """`text` in `width` characters: the end kept (` [backbone, precision]`, ` NOT DEPLOYABLE`), the middle
    left out."""
    if len(text) <= width:
        return text
    keep_end = max(0, min(len(text) - text.find(" [") if " [" in text else 0, width // 2))
    if "NOT DEPLOYABLE" in text:
        keep_end = max(keep_end, min(len(" NOT DEPLOYABLE"), width // 2))
    head = width - 1 - keep_end
    return text[:head] + "…" + (text[len(text) - keep_end :] if keep_end else "")


def end_parent_run(
    sweep_dir: str | Path, outcome: SweepOutcome, aborted: bool = False
) -> tuple[str | None, str | None, str | None]:
    """End the sweep's parent run if it is still running: FINISHED when every job finished or was skipped
    and none is missing, else FAILED; the counts become `feclip.children_<status>` tags, the study (report
    tables and figure, multirun.yaml) its artifacts. Returns (status, UI address, the command that serves
    the UI for a sqlite store). A
    store that cannot be reached is reported in one line (the job folders keep everything for `sync`)."""
    path = parent_file(sweep_dir)
    if not path.exists():
        return None, None, None
    record = json.loads(path.read_text())
    uri = record["tracking_uri"]
    try:
        with fast_http(5):
            client = client_for(uri)
            log_study(client, record["run_id"], Path(sweep_dir))
            status = close_parent(client, record["run_id"], outcome, aborted)
            url = run_url(uri, client.get_run(record["run_id"]).info.experiment_id, record["run_id"])
    except Exception as error:  # the store may be gone: the sweep's results are in its folders
        print(
            f"feclip: could not end the sweep's parent run ({one_line(error, 160)}); sync it later",
            file=sys.stderr,
        )
        return None, None, None
    return status, url, ui_command(uri)


def log_study(client, run_id: str, sweep_dir: Path) -> None:
    """The parent run carries the study, each file once: the report folder (tables, comparison.png) and the
    sweep's multirun.yaml. It logs no metrics: MLflow's charts compare runs, and the children carry theirs
    (group them by tags.variant and tags.domain for one bar per variant x domain)."""
    if client.get_run(run_id).info.status != "RUNNING":
        return
    if (sweep_dir / REPORT_DIR).is_dir():
        client.log_artifacts(run_id, str(sweep_dir / REPORT_DIR), REPORT_DIR)
    if (sweep_dir / "multirun.yaml").exists():
        client.log_artifact(run_id, str(sweep_dir / "multirun.yaml"))


def close_parent(client, run_id: str, outcome: SweepOutcome, aborted: bool) -> str | None:
    if client.get_run(run_id).info.status != "RUNNING":
        return None
    for name, count in outcome.counts.items():
        client.set_tag(run_id, f"feclip.children_{name}", str(count))
    if aborted:
        client.set_tag(
            run_id, "failure_reason", "sweep ended without on_multirun_end (interrupted or a job crashed)"
        )
    status = "FINISHED" if outcome.ok and not aborted else "FAILED"
    client.set_terminated(run_id, status)
    return status


def sweep_exit_code() -> int:
    """0 when this process ran no sweep or its last sweep had no failed or missing job, else 1."""
    return 0 if not LAST_SWEEP or LAST_SWEEP[0].ok else 1
