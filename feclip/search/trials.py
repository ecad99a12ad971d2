"""A trial's objective values, read from its jobs' folders: one job per domain of the search, each with its
status in `run.json` and every metric in `metrics.json` (the job folder is the source of truth, whatever
launcher ran it and whether tracking kept up). A trial whose job failed, or whose objective metric is
undefined on its data, is a failed trial with the reason; a metric no finished job logs is a wrong
objective, which stops the search."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from feclip.search.space import AGGREGATES, DEV_PREFIX, SearchError
from feclip.tracking.local import METRICS_FILE, RUN_FILE, read_json


@dataclass
class Outcome:
    """A trial's `values` (one per objective, `objective_names` order) or its failure `reason`; `attrs`:
    what the study keeps beside them (per-domain values, job folders and runs, random-init, deployable)."""

    values: list[float] | None
    reason: str | None = None
    attrs: dict = field(default_factory=dict)


def job_record(folder: Path) -> dict:
    """{status, reason, run_id, metrics, undefined, random_init, deployable} of one job folder (of the job it
    was folded into when it was folded: `feclip.jobs.common.fold`)."""
    folder = Path(folder)
    if not (folder / RUN_FILE).exists():
        return {"status": "MISSING", "reason": f"{folder} has no {RUN_FILE}: the job never started"}
    run = read_json(folder / RUN_FILE)
    if run.get("folded_into"):  # a repeated proposal: the same computation as an earlier job, its record
        return job_record(Path(run["folded_into"]["job_folder"]))
    found = read_json(folder / METRICS_FILE) if (folder / METRICS_FILE).exists() else {}
    return {
        "status": run.get("status"),
        "reason": run.get("reason"),
        "run_id": run.get("run_id"),
        "overrides": run.get("overrides", []),
        "metrics": found.get("metrics", {}),
        "undefined": found.get("undefined", {}),
        "random_init": bool(found.get("random_init", False)),
        "deployable": found.get("deployable", True),
    }


def _value(record: dict, metric: str, domain: str) -> float | str:
    """The job's metric value, or why there is none (a str)."""
    if record["status"] != "FINISHED":
        return f"job of domain {domain} {str(record['status']).lower()}: {record['reason']}"
    if metric not in record["metrics"]:
        logged = ", ".join(m for m in record["metrics"] if m.startswith(DEV_PREFIX) and "_ci_" not in m)
        raise SearchError(
            f"search.objective: {metric} is not a metric this job logs ({record.get('folder')}); expected "
            f"one of: {logged} (in a new study: search.name=<another>)"
        )
    value = record["metrics"][metric]
    if value is None:
        return f"{metric} is undefined on domain {domain}: {record['undefined'].get(metric, 'no value')}"
    return float(value)


def trial_outcome(folders: dict[str, Path], metrics: tuple[str, ...], aggregate: str) -> Outcome:
    """The objective values of the jobs in `folders` ({domain: job folder}): each metric per domain, reduced
    over the domains by `aggregate` (mean, min) or one value per domain (each)."""
    records = {d: {**job_record(f), "folder": str(f)} for d, f in folders.items()}
    found = {(m, d): _value(r, m, d) for m in metrics for d, r in records.items()}
    attrs = {
        "jobs": {d: {k: r.get(k) for k in ("folder", "status", "run_id")} for d, r in records.items()},
        "random_init": any(r.get("random_init") for r in records.values()),
        "deployable": all(r.get("deployable", True) for r in records.values()),
        "domain_values": {f"{m} {d}": v for (m, d), v in found.items() if isinstance(v, float)},
    }
    failures = [v for v in found.values() if isinstance(v, str)]
    if failures:
        return Outcome(None, "; ".join(dict.fromkeys(failures)), attrs)
    reduce = AGGREGATES.get_entry(aggregate).reduce
    if reduce is None or len(folders) == 1:
        return Outcome([found[m, d] for m in metrics for d in folders], attrs=attrs)
    return Outcome([reduce([found[m, d] for d in folders]) for m in metrics], attrs=attrs)
