"""Variant x domain tables of tracked HDMAP runs, with the published anchor numbers of docs/rivals.md beside.

`collect_runs` reads finished MLflow runs (one row per job run: domain, variant, seed, backbone, metrics);
`variant_domain_table` turns one metric into cells "mean ± std (n=seeds)" x100 per variant and domain, plus
the anchor rows comparable to that metric; `write_report` writes report.md and one CSV per table.
Tables remember how many of their runs used a random-init backbone, so every written report says so.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from scipy.stats import t as student_t

from feclip.data.hdmap import DOMAINS
from feclip.errors import FeclipError
from feclip.evaluation.compare import compare_runs
from feclip.identity import SEPARATOR, variant_label
from feclip.tracking.local import METRICS_FILE, RUN_FILE, job_folders, read_json
from feclip.tracking.tracker import PARENT_TAG, client_for, experiment_id, search_all_runs
from feclip.tracking.uris import check_tracking_uri, sqlite_path

PERCENT_PREFIXES = ("auroc", "ap", "acc", "f1", "tpr", "gate_acc", "pro", "pixel_auroc")
RUN_COLUMNS = (
    "run_id",
    "run_name",
    "start_time",
    "domain",
    "variant",
    "seed",
    "backbone",
    "precision",
    "device",
    "random_init",
    "deployable",
    "eval_set",
    "parent_run_id",
    "sweep_id",
)
IDENTITY = ("backbone", "precision", "device")  # what a run computed with, besides its variant
MISSING = "–"
METRIC_NOTES = {
    "auroc": "image AUROC over all test images",
    "ap": "average precision over all test images",
    "auroc_cold": "AUROC within cold (cold fault vs cold good)",
    "auroc_warm": "AUROC within warm (warm fault vs warm good)",
    "auroc_cross": "AUROC cold fault vs warm good (the hardest case)",
    "auroc_cross2": "AUROC warm fault vs cold good",
    "acc_oracle": "accuracy at the best threshold on the test scores themselves (oracle: optimistic)",
    "acc_val": "accuracy at a percentile of held-out normal scores (deployable)",
    "acc_val_cold": "accuracy on cold images at the acc_val threshold (deployable)",
    "acc_val_warm": "accuracy on warm images at the acc_val threshold (deployable)",
    "acc_oracle_cold": "accuracy on cold images at the oracle threshold of all test images (optimistic)",
    "acc_fa1": "accuracy at the threshold of a 1 % false-alarm rate on the threshold normals (deployable)",
    "acc_fa1_cold": "cold-image accuracy at the 1 % false-alarm threshold (deployable)",
    "f1_max": "best F1 over thresholds on the test scores (oracle)",
    "tpr_at_fpr1": "TPR at 1% FPR (on the test goods themselves)",
    "gate_acc": "the gate's cold/warm routing accuracy against the file-index truth (gated runs)",
}


RANDOM_INIT_WARNING = (
    "**Warning: {random_init} of {n_runs} runs used a random-init backbone (`feclip.random_init=true`): "
    "these numbers test the pipeline, not FE-CLIP.**"
)
HOW_TO_READ = (
    "Cells: mean [95 % interval] (x100 for rate metrics), n = seeds when > 1. One run: its stratified "
    "bootstrap interval over the scored images (`<metric>_ci_lo/_ci_hi`). Several seeds: mean ± 1.96 "
    "sqrt(s²/n + SE²), s the SD over seeds and SE the runs' image-bootstrap SE (the seeds share the images, "
    "so their image noise does not average out); `seed-invariant` where every seed gave the same value. "
    "`mean` = mean over the domains present. Every row of a domain was scored on the same images "
    "(`eval_set`). `NOT DEPLOYABLE` marks rows whose runs read test labels (oracle gate, ...). Tables "
    "named `dev/...` are the dev part: choose variants there, claim on the test tables. Rows starting with "
    "`anchor:` are published numbers from docs/rivals.md, measured under other protocols (notes under each "
    "table)."
)
Z95 = 1.959964  # two-sided 95 % normal quantile


class ReportError(FeclipError):
    """The runs cannot make the requested table; the message names the experiment/metric and what exists."""


@dataclass(frozen=True)
class Anchor:
    """Published numbers of a rival (docs/rivals.md 1.2), comparable to one feclip metric."""

    label: str
    metric: str
    values: tuple[str, str, str, str]  # A, B, C, D as published
    note: str
    mean: str | None = None  # as published; None -> computed from the four values

    @property
    def row(self) -> str:
        return f"anchor: {self.label}"

    def cells(self) -> list[str]:
        mean = self.mean or f"{sum(map(float, self.values)) / len(self.values):.2f}"
        return [*self.values, mean]


WINCLIP = "WinCLIP 0-shot 'industrial sensor data' (rivals.md 4.2)"
WINCLIP_NOTE = (
    "docs/rivals.md 4.2: WinCLIP zero-shot, ViT-B-16-plus-240, 240x240, prompt class name "
    "'industrial sensor data', all 2000 test images, one run"
)
PATCHCORE = "PatchCore full 1000-train (rivals.md 3.2)"
PATCHCORE_NOTE = (
    "docs/rivals.md 3.2: PatchCore, DINOv2 ViT-B/14 blocks.8, 518 bilinear, 1000 train normals, coreset "
    "1%; accuracy at the test-optimal threshold (percentile sweep on test scores = oracle: compare with "
    "acc_oracle), 1980 test images, one seed"
)
CPD = "CPD-PatchCore 2-layer multi-k, 32-shot (rivals.md 6.2)"
CPD_NOTE = (
    "docs/rivals.md 6.2: CPD-PatchCore, ViT-B blocks 8+11, [f|ctx2|ctx3], references = 16 coldest + 16 "
    "warmest test/good images (still scored); test-optimal threshold (oracle), 1980 test images, one seed"
)
EXP23 = "PatchCore exp-23, the user's paper (rivals.md 3.1)"
EXP23_NOTE = (
    "docs/rivals.md 3.1: the user's PatchCore baseline (DINOv2 ViT-S/14 blocks.8, 518 nearest, no ImageNet "
    "norm, coreset 1%), accuracy as reported (paper figure: domain C 79.9 ± 1.2, domain average 91.6 ± 7.7; "
    "D not published, ≈ 93.8 implied); threshold most likely test-optimal (Youden J): compare with acc_oracle"
)
ANCHORS = (
    Anchor(EXP23, "acc_oracle", ("96.3", "96.4", "79.9", "–"), EXP23_NOTE, "91.6"),
    Anchor(WINCLIP, "auroc", ("81.93", "81.32", "73.05", "80.86"), WINCLIP_NOTE, "79.29"),
    Anchor(WINCLIP, "auroc_cold", ("80.46", "72.33", "72.50", "71.06"), WINCLIP_NOTE, "74.09"),
    Anchor(WINCLIP, "auroc_warm", ("84.49", "92.08", "75.53", "91.70"), WINCLIP_NOTE, "85.95"),
    Anchor(WINCLIP, "auroc_cross", ("75.04", "66.86", "64.25", "68.69"), WINCLIP_NOTE, "68.71"),
    Anchor(WINCLIP, "auroc_cross2", ("87.73", "94.02", "79.93", "91.99"), WINCLIP_NOTE, "88.42"),
    Anchor(
        "WinCLIP 0-shot best prompt 'sensor fault detection heatmap' (rivals.md 4.1, 80% test subset)",
        "auroc",
        ("85.83", "97.72", "75.29", "94.15"),
        "docs/rivals.md 4.1: WinCLIP zero-shot, best prompt by mean; AUROC over a random ~80% subset of the "
        "test images (not the full 2000)",
        "88.25",
    ),
    Anchor(PATCHCORE, "auroc", ("99.85", "99.82", "98.21", "99.77"), PATCHCORE_NOTE),
    Anchor(PATCHCORE, "acc_oracle", ("99.09", "99.19", "94.75", "98.99"), PATCHCORE_NOTE),
    Anchor(PATCHCORE, "acc_oracle_cold", ("99.09", "98.99", "91.63", "98.39"), PATCHCORE_NOTE),
    Anchor(PATCHCORE, "acc_oracle_warm", ("99.09", "99.39", "97.87", "99.60"), PATCHCORE_NOTE),
    Anchor(CPD, "auroc", ("99.996", "99.998", "99.67", "99.996"), CPD_NOTE, "99.91"),
    Anchor(CPD, "acc_oracle", ("99.70", "99.80", "97.68", "99.90"), CPD_NOTE, "99.27"),
    Anchor(CPD, "acc_oracle_cold", ("99.59", "99.59", "96.65", "99.80"), CPD_NOTE),
    Anchor(CPD, "acc_oracle_warm", ("99.80", "100.00", "98.69", "100.00"), CPD_NOTE),
)


ORACLE_METRICS = ("acc_oracle", "f1_max", "thr_oracle")  # thresholds that see the test labels


def is_oracle(metric: str) -> bool:
    return metric.split("/")[-1].startswith(ORACLE_METRICS)


def _note(metric: str) -> str:
    part, _, name = metric.rpartition("/")
    note = METRIC_NOTES.get(name, name)
    return f"{note}; on the {part} part (choose here, claim on the test tables)" if part else note


def anchors_for(metric: str) -> list[Anchor]:
    return [anchor for anchor in ANCHORS if anchor.metric == metric]


# ------------------------------------------------------------------------------------------- runs


def _open_experiment(uri: str, experiment: str):
    """(client, experiment id); `ReportError` for a missing store or experiment."""
    check_tracking_uri(uri)
    path = sqlite_path(uri)
    if path and not Path(path).exists():
        raise ReportError(
            f"tracking database {path} (from {uri!r}) does not exist; run a job first or fix --uri"
        )
    client = client_for(uri)
    exp_id = experiment_id(client, experiment, create=False)
    if exp_id is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ReportError(
            f"no MLflow experiment {experiment!r} at {uri}; existing: {', '.join(names) or 'none'}"
        )
    return client, exp_id


def _row(identity: dict, tags: dict, params: dict, metrics: dict) -> dict:
    """One report row from a run's identity (run_id, run_name, start_time), tags, params and metrics."""
    return {
        **identity,
        "domain": tags.get("domain") or params.get("domain.name"),
        "variant": variant_label(tags.get("method"), tags.get("variant") or identity["run_name"]),
        "seed": tags.get("seed") or params.get("seed") or "",
        "backbone": tags.get("backbone") or params.get("backbone.name") or "unknown",
        "deployable": tags.get("deployable") != "false",
        "eval_set": tags.get("eval_set") or "unknown",
        "precision": tags.get("precision") or "unknown",
        "device": tags.get("device") or "unknown",
        "random_init": tags.get("feclip.random_init") == "true",
        "parent_run_id": tags.get(PARENT_TAG),
        "sweep_id": tags.get("sweep_id"),
        **metrics,
    }


def _run_row(run) -> dict:
    identity = {"run_id": run.info.run_id, "run_name": run.info.run_name, "start_time": run.info.start_time}
    return _row(identity, run.data.tags, run.data.params, run.data.metrics)


def _frame(rows: list[dict]) -> pd.DataFrame:
    runs = pd.DataFrame(rows, columns=list(dict.fromkeys([*RUN_COLUMNS, *(k for r in rows for k in r)])))
    return runs.sort_values("start_time", ascending=False, kind="stable").reset_index(drop=True)


def _jobs_of(folder: Path) -> list[Path]:
    return [folder] if (folder / RUN_FILE).is_file() else job_folders(folder)


def folder_runs(*folders: str | Path) -> pd.DataFrame:
    """The report rows of FINISHED jobs, from their folders (run.json + metrics.json): the same table as
    `collect_runs` without a store, so a sweep whose tracking was lost still reports. `folders`: sweep folders
    (their jobs) or job folders; column `folder` names each job's."""
    rows = []
    jobs = [
        f
        for given in map(Path, folders)
        for f in ([given] if (given / RUN_FILE).is_file() else job_folders(given))
    ]
    for folder in jobs:
        record = read_json(folder / RUN_FILE)
        if record.get("status") != "FINISHED" or not (folder / METRICS_FILE).exists():
            continue
        metrics = read_json(folder / METRICS_FILE)["metrics"]
        identity = {
            "run_id": record.get("run_id"),
            "run_name": record.get("run_name"),
            "start_time": record.get("updated"),
            "folder": str(folder),
        }
        values = {k: (float("nan") if v is None else v) for k, v in metrics.items()}
        rows.append(_row(identity, record.get("tags", {}), {}, values))
    runs = _frame(rows)
    runs.attrs.update(experiment=None, uri=None, superseded=0)
    return runs


def run_scores(runs: pd.DataFrame, part: str = "test") -> pd.DataFrame:
    """The per-image scores of `runs` (rows of `folder_runs`), long: their scores.csv rows of study `part`
    (every row for runs without parts) with run (its folder), variant, seed, domain added."""
    tables = []
    for run in runs.to_dict("records"):
        scores = pd.read_csv(Path(run["folder"]) / "scores.csv")
        if "split" in scores and (scores["split"] == part).any():
            scores = scores[scores["split"] == part]
        identity = {
            "run": run["folder"],
            "variant": run["variant"],
            "seed": run["seed"],
            "domain": run["domain"],
        }
        tables.append(scores.drop(columns=["domain"], errors="ignore").assign(**identity))
    if not tables:
        raise ReportError("no finished runs to compare")
    return pd.concat(tables, ignore_index=True)


def comparison(runs: pd.DataFrame, metric: str, baseline: str, *, part: str = "test", n: int = 2000):
    """`feclip.evaluation.compare.compare_runs` of the runs' per-image scores against `baseline`
    (`baseline_label`)."""
    return compare_runs(run_scores(runs, part), metric, baseline=baseline_label(runs, baseline), n=n)


def baseline_label(runs: pd.DataFrame, baseline: str) -> str:
    """The variant label `baseline` names: itself (`patchcore·tiny`), typed with a dot for the `·`
    (`patchcore.tiny`; also the older `patchcore · tiny`), or the one label it begins (`patchcore.dinov2` for
    a preset's long variant name); several or none is a ReportError."""
    labels = sorted(set(runs["variant"]))
    typed = baseline.replace(f" {SEPARATOR} ", SEPARATOR, 1)
    wanted = typed if typed in labels or SEPARATOR in typed else typed.replace(".", SEPARATOR, 1)
    found = [label for label in labels if label == wanted] or [l for l in labels if l.startswith(wanted)]
    if len(found) != 1:
        which = "several" if found else "no"
        raise ReportError(f"--baseline {baseline!r} names {which} variant of {labels}; expected one of them")
    return found[0]


def comparison_lines(table: pd.DataFrame, part: str = "test") -> list[str]:
    """The markdown section of one comparison table (`comparison`)."""
    first = table.iloc[0]
    lines = [
        f"## Δ vs `{first.baseline}`: {first.metric} ({part} part, paired on identical images)",
        "",
        "Δ in points [95 % interval: hierarchical bootstrap over seeds, then images], p Holm-adjusted over "
        "the table (one seed each: paired DeLong for AUROC, exact McNemar for accuracy); mdd: the smallest "
        "Δ detectable at 80 % power with these sizes.",
        "",
        "| variant | domain | comparison | mdd |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r.variant} | {r.domain} | {r.text} | {100 * r.mdd:.2f} |" for r in table.itertuples()]
    return [*lines, ""]


def collect_runs(
    uri: str, experiment: str, parent_run_id: str | None = None, latest_only: bool = True
) -> pd.DataFrame:
    """One row per FINISHED job run of `experiment` (sweep parent runs excluded), optionally only the children
    of `parent_run_id`. Columns: RUN_COLUMNS, then one column per metric (its last logged value).

    `latest_only`: of runs repeating the same (variant, domain, seed, IDENTITY), keep the newest, so a rerun
    supersedes instead of being averaged in; the count left out is `runs.attrs["superseded"]`."""
    client, exp_id = _open_experiment(uri, experiment)
    filters = ["attributes.status = 'FINISHED'"]
    if parent_run_id:
        filters.append(f"tags.`{PARENT_TAG}` = '{parent_run_id}'")
    found = search_all_runs(client, [exp_id], " and ".join(filters))
    runs = _frame([_run_row(run) for run in found if run.data.tags.get("feclip.parent") != "true"])
    n_all = len(runs)
    if latest_only:
        runs = runs.drop_duplicates(["variant", "domain", "seed", *IDENTITY]).reset_index(drop=True)
    runs.attrs.update(experiment=experiment, uri=uri, superseded=n_all - len(runs))
    return runs


# ----------------------------------------------------------------------------------------- tables


def _scale(metric: str) -> float:
    return 100.0 if metric.split("/")[-1].startswith(PERCENT_PREFIXES) else 1.0


def interval(values: pd.Series, lo: pd.Series, hi: pd.Series) -> tuple[float, float, float]:
    """(mean, lo, hi) of one cell: the runs' metric `values` with their bootstrap intervals (NaN where a run
    logged none). One run: its interval. Several: mean ± Z95 sqrt(s²/n + SE²), s the SD over runs, SE² the
    mean squared image-bootstrap SE of the runs (shared images: it does not shrink with n); runs without
    intervals (older runs): the Student t interval over the seeds alone."""
    mean, n = float(values.mean()), len(values)
    if n == 1:
        return mean, float(lo.iloc[0]), float(hi.iloc[0])
    image_var = float((((hi - lo) / (2 * Z95)) ** 2).mean())
    if math.isnan(image_var):
        half = float(student_t.ppf(0.975, n - 1)) * math.sqrt(values.var(ddof=1) / n)
    else:
        half = Z95 * math.sqrt(values.var(ddof=1) / n + image_var)
    return mean, mean - half, mean + half


def _cell(numbers: dict, digits: int) -> str:
    """'93.4 [92.1, 94.6] (n=3)' from a cell's numbers (already scaled)."""
    text = f"{numbers['mean']:.{digits}f}"
    if not math.isnan(numbers["lo"]):
        text += f" [{numbers['lo']:.{digits}f}, {numbers['hi']:.{digits}f}]"
    notes = [f"n={numbers['n']}"] if numbers["n"] > 1 else []
    notes += ["seed-invariant"] if numbers["seed_invariant"] else []
    return f"{text} ({', '.join(notes)})" if notes else text


def _mean_cell(domain_means: pd.Series, digits: int) -> str:
    """Mean over the domains present; names them when not all four are."""
    text = f"{domain_means.mean():.{digits}f}"
    return text if len(domain_means) == len(DOMAINS) else f"{text} ({', '.join(domain_means.index)} only)"


def identity_suffix(data: pd.DataFrame) -> pd.Series:
    """Per run " [vit_l14_336, bf16]": the IDENTITY columns whose values differ between the runs, else ""."""
    mixed = [column for column in IDENTITY if column in data and data[column].nunique() > 1]
    if not mixed:
        return pd.Series("", index=data.index)
    return " [" + data[mixed].astype(str).agg(", ".join, axis=1) + "]"


def same_images(runs: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The runs of each domain scored on its most common `eval_set`, and one line per domain naming the runs
    left out because they scored other images (another split or protocol): a table's rows are paired."""
    if "eval_set" not in runs:
        return runs, []
    keep = pd.Series(True, index=runs.index)
    notes = []
    for domain, group in runs.groupby("domain"):
        common = group["eval_set"].value_counts().index[0]
        other = group[group["eval_set"] != common]
        if len(other):
            keep[other.index] = False
            names = ", ".join(other["run_name"].astype(str))
            notes.append(
                f"left out of domain {domain}: {names} (eval_set {', '.join(other['eval_set'].unique())}): "
                f"scored other images than the {len(group) - len(other)} runs of eval_set {common}"
            )
    return runs[keep], notes


def _row_labels(data: pd.DataFrame) -> pd.Series:
    labels = data["variant"] + identity_suffix(data)
    if "deployable" in data:
        labels = labels.where(data["deployable"].astype(bool), labels + " NOT DEPLOYABLE")
    return labels


def cell_numbers(data: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (row label, domain): mean, lo, hi (scaled), n, seed_invariant: the table's numbers."""
    scale = _scale(metric)
    lo = data.get(f"{metric}_ci_lo", pd.Series(float("nan"), index=data.index)).astype(float)
    hi = data.get(f"{metric}_ci_hi", pd.Series(float("nan"), index=data.index)).astype(float)
    rows = []
    for (label, domain), group in data.groupby([_row_labels(data), data["domain"]]):
        values = group[metric].astype(float)
        mean, low, high = interval(values, lo[group.index], hi[group.index])
        rows.append(
            {
                "variant": label,
                "domain": domain,
                "mean": mean * scale,
                "lo": low * scale,
                "hi": high * scale,
                "n": len(group),
                "seed_invariant": len(group) > 1 and values.nunique() == 1,
            }
        )
    return pd.DataFrame(rows, columns=["variant", "domain", "mean", "lo", "hi", "n", "seed_invariant"])


def variant_domain_table(runs: pd.DataFrame, metric: str, digits: int = 1) -> pd.DataFrame:
    """Rows = variants (with `[backbone, precision, device]`, those of them the runs mix: runs of another
    precision are another row, never pooled as seeds; `NOT DEPLOYABLE` where runs read test labels) then the
    anchor rows for `metric`; columns A B C D mean; cells "93.4 [92.1, 94.6] (n=3)" (`interval`), x100 for
    rate metrics, "–" where no run exists. Runs that scored other images than their domain's others are left
    out (`same_images`). attrs: metric, n_runs, backbones {name: runs}, random_init (runs), experiment,
    numbers (`cell_numbers`), left_out (lines)."""
    if metric not in runs.columns:
        logged = sorted(set(runs.columns) - set(RUN_COLUMNS))
        raise ReportError(
            f"metric {metric!r} was logged by none of the {len(runs)} runs; logged: {', '.join(logged)}"
        )
    data = runs[runs["domain"].isin(DOMAINS) & runs[metric].notna()]
    data, left_out = same_images(data)
    numbers = cell_numbers(data, metric)
    table = pd.DataFrame(
        MISSING, index=pd.Index(sorted(set(numbers["variant"])), name="variant"), columns=[*DOMAINS, "mean"]
    )
    for cell in numbers.to_dict("records"):
        table.loc[cell["variant"], cell["domain"]] = _cell(cell, digits)
    for row, group in numbers.groupby("variant"):
        table.loc[row, "mean"] = _mean_cell(group.set_index("domain")["mean"], digits)
    for anchor in anchors_for(metric):
        table.loc[anchor.row] = anchor.cells()
    table.attrs.update(
        metric=metric,
        n_runs=len(data),
        backbones=dict(Counter(data["backbone"])),
        random_init=int(data["random_init"].sum()),
        experiment=runs.attrs.get("experiment"),
        superseded=runs.attrs.get("superseded", 0),
        numbers=numbers,
        left_out=left_out,
    )
    return table


# ----------------------------------------------------------------------------------------- writing


def markdown_lines(table: pd.DataFrame) -> list[str]:
    header = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [
        "| " + " | ".join([str(row), *map(str, cells)]) + " |"
        for row, cells in zip(table.index, table.values, strict=True)
    ]
    return lines


def report_header(tables: dict[str, pd.DataFrame]) -> list[str]:
    """Title, runs and backbones, the random-init warning when any run used one, how to read the cells."""
    first = next(iter(tables.values()))
    backbones: dict[str, int] = {}
    for table in tables.values():
        for name, count in table.attrs.get("backbones", {}).items():
            backbones[name] = max(backbones.get(name, 0), count)
    n_runs = max(table.attrs.get("n_runs", 0) for table in tables.values())
    random_init = max(table.attrs.get("random_init", 0) for table in tables.values())
    used = ", ".join(f"{name} ({count} runs)" for name, count in sorted(backbones.items())) or "none"
    superseded = first.attrs.get("superseded", 0)
    lines = [f"# FE-CLIP HDMAP report: experiment `{first.attrs.get('experiment')}`", ""]
    lines += [f"Runs: {n_runs} finished job runs ({superseded} older reruns left out). Backbone: {used}.", ""]
    if random_init:
        lines += [RANDOM_INIT_WARNING.format(random_init=random_init, n_runs=n_runs), ""]
    return [*lines, HOW_TO_READ, ""]


def write_report(
    tables: dict[str, pd.DataFrame],
    out_dir: str | Path,
    runs: pd.DataFrame | None = None,
    comparisons: list[pd.DataFrame] = (),
) -> Path:
    """Write `<out_dir>/report.md` (header, the `comparisons` tables, one section per metric),
    `<metric>.csv` per table (numbers in columns), `compare_<metric>.csv` per comparison and, when given,
    `runs.csv` (one row per run). Returns the markdown path."""
    if not tables:
        raise ReportError("write_report got no tables; expected {metric: variant_domain_table(...)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = report_header(tables)
    for compared in comparisons:
        lines += comparison_lines(compared)
        compared.to_csv(out / f"compare_{compared.iloc[0].metric}.csv", index=False)
    for metric, table in tables.items():
        scaled = " (x100)" if _scale(metric) != 1 else ""
        oracle = ", ORACLE threshold: chosen on the test labels" if is_oracle(metric) else ""
        lines += [
            f"## {metric}{scaled}{oracle}",
            "",
            _note(metric),
            "",
            *markdown_lines(table),
            "",
        ]
        lines += [f"- `{a.row}`: {a.note}" for a in anchors_for(metric) if a.row in table.index]
        lines.append("")
        lines += [f"- {line}" for line in table.attrs.get("left_out", [])]
        table.attrs["numbers"].to_csv(out / f"{metric.replace('/', '_')}.csv", index=False)
    if runs is not None:
        runs.sort_values(["variant", "domain", "seed"]).to_csv(out / "runs.csv", index=False)
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path


def build_report(
    uri: str, experiment: str, metrics: list[str], out_dir: str | Path, parent_run_id: str | None = None
) -> Path:
    """collect_runs -> one table per metric -> write_report; the CLI `scripts/report.py`."""
    runs = collect_runs(uri, experiment, parent_run_id)
    if runs.empty:
        scope = f"children of run {parent_run_id}" if parent_run_id else "runs"
        raise ReportError(f"experiment {experiment!r} at {uri} has no finished {scope}")
    return write_report({metric: variant_domain_table(runs, metric) for metric in metrics}, out_dir, runs)


def build_folder_report(folder: str | Path, metrics: list[str], out_dir: str | Path) -> Path:
    """The report of a sweep folder's (or one job folder's) finished jobs, read from their run.json and
    metrics.json: the job folders are the source, so no store is opened (`feclip report --sweep-dir`)."""
    runs = folder_runs(folder)
    runs = runs[runs["domain"].notna() & (runs["domain"] != "-")]
    if runs.empty:
        raise ReportError(f"{folder} has no finished HDMAP job folders (run.json FINISHED with metrics.json)")
    tables = {metric: variant_domain_table(runs, metric) for metric in metrics}
    for table in tables.values():
        table.attrs["experiment"] = str(folder)
    return write_report(tables, out_dir, runs)
