"""Comparison tables and intervals from per-image score tables (the rows of the runs' scores.csv).

A scores table has the columns `path, condition ('cold' / 'warm'), label (0 good / 1 fault), score` and, for
the accuracies at a deployable threshold, the run's own decisions: `flag_<point>` (bool: the run flagged the
image at threshold point `val`, `fa1`, `fa5`, ..., as its scores.csv records them; `decision` is read as
`flag_val`). Those thresholds came from other normals, so their intervals leave out the threshold's own noise
(the run logs it as thr_<point>_sd).
`compare_runs` takes several runs in one long table with `run, variant, seed, domain` added.

Metrics (definitions in `feclip.evaluation.metrics`): `auroc`, `acc_oracle`, `acc_<point>` (`acc_val`,
`acc_fa1`, ...), each with an optional subset suffix `_cold` / `_warm` (and `_cross` / `_cross2` for AUROC,
cold faults vs warm goods and the reverse). `acc_oracle*` re-runs the oracle threshold (over all test
images) inside every bootstrap resample. Resamples are stratified by label x condition; values are
fractions, the `text` column is in points (x 100).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from feclip.errors import FeclipError
from feclip.evaluation import stats
from feclip.evaluation.metrics import CONDITIONS

KINDS = ("auroc", "acc_oracle", "acc_<point>")
SUBSETS = {"auroc": ("", "_cold", "_warm", "_cross", "_cross2"), "acc": ("", "_cold", "_warm")}
FLAG = "flag_"  # scores-table column prefix of a run's decisions at a threshold point
RUN_COLUMNS = ("run", "variant", "domain")  # plus `seed`, for the reader: one run is one seed


class CompareError(FeclipError):
    """A score table that cannot be compared: missing columns, unknown metric, runs on different images."""


def parse_metric(metric: str) -> tuple[str, str]:
    """(kind, subset suffix) of a metric name: 'auroc_cold' -> ('auroc', '_cold'), 'acc_fa1_cold' ->
    ('acc_fa1', '_cold')."""
    if metric.startswith("auroc") and metric[len("auroc") :] in SUBSETS["auroc"]:
        return "auroc", metric[len("auroc") :]
    if metric.startswith("acc_"):
        point, _, suffix = metric[len("acc_") :].partition("_")
        if point and point.isalnum() and f"_{suffix}".rstrip("_") in SUBSETS["acc"]:
            return f"acc_{point}", f"_{suffix}".rstrip("_")
    known = [f"auroc{s}" for s in SUBSETS["auroc"]] + [f"acc_<oracle|val|fa1|...>{s}" for s in SUBSETS["acc"]]
    raise CompareError(f"metric: unknown {metric!r}; expected one of {', '.join(known)}")


def _require(table: pd.DataFrame, columns, what: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise CompareError(f"{what}: missing column(s) {missing}; has {list(table.columns)}")


def _flags(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """{point: (N,) bool decisions} of a run's `flag_<point>` columns (a `decision` column is `val`'s)."""
    flags = {c.removeprefix(FLAG): frame[c].to_numpy(bool) for c in frame if c.startswith(FLAG)}
    if "decision" in frame:
        flags.setdefault("val", frame["decision"].to_numpy(bool))
    return flags


class Images:
    """The images shared by some runs, sorted by path: positive (N,) bool, cold (N,) bool, strata (N,) int
    (label x condition), and per run its scores (N,) and decisions (N,) bool or None."""

    def __init__(self, runs: dict[str, pd.DataFrame]):
        first = next(iter(runs.values()))
        self.paths = first["path"].to_numpy()
        self.positive = first["label"].to_numpy() == 1
        self.cold = first["condition"].to_numpy() == "cold"
        self.strata = 2 * self.positive + self.cold
        self.scores = {run: frame["score"].to_numpy(float) for run, frame in runs.items()}
        self.decisions = {run: _flags(frame) for run, frame in runs.items()}

    @classmethod
    def of(cls, table: pd.DataFrame, what: str) -> Images:
        """The runs of `table` (column `run`, or one run) aligned by path; refuses runs on other images."""
        _require(table, ("path", "condition", "label", "score"), what)
        groups = table.groupby("run", sort=False) if "run" in table else [("run", table)]
        runs = {str(run): frame.sort_values("path", kind="stable") for run, frame in groups}
        first, reference = next(iter(runs.items()))
        for run, frame in runs.items():
            paths = frame["path"]
            if paths.duplicated().any():
                raise CompareError(f"{what}: run {run} has path {paths[paths.duplicated()].iloc[0]!r} twice")
            if len(frame) != len(reference) or (paths.to_numpy() != reference["path"].to_numpy()).any():
                differ = len(set(paths) ^ set(reference["path"]))
                raise CompareError(
                    f"{what}: runs {sorted(runs)} were not scored on the same set of paths ({run}: "
                    f"{len(frame)} images, {differ} paths differ from {first}'s)"
                )
            for column in ("label", "condition"):
                if (frame[column].to_numpy() != reference[column].to_numpy()).any():
                    raise CompareError(
                        f"{what}: runs {run} and {first} disagree on the {column} of some paths"
                    )
        conditions, labels = set(map(str, reference["condition"])), set(reference["label"])
        if not conditions <= set(CONDITIONS) or not labels <= {0, 1}:
            raise CompareError(
                f"{what}: expected conditions {CONDITIONS} and labels 0/1, got {sorted(conditions)} and "
                f"{sorted(map(str, labels))}"
            )
        return cls(runs)

    def subset(self, suffix: str) -> np.ndarray:
        """(N,) bool: the images of a metric's subset suffix."""
        cold, fault = self.cold, self.positive
        return {
            "": np.ones_like(cold),
            "_cold": cold,
            "_warm": ~cold,
            "_cross": (cold & fault) | (~cold & ~fault),
            "_cross2": (~cold & fault) | (cold & ~fault),
        }[suffix]

    def correct(self, kind: str, run: str) -> np.ndarray:
        """(N,) bool: the run's accuracy-metric decision is right (oracle: threshold over all images)."""
        if kind != "acc_oracle":
            point = kind.removeprefix("acc_")
            if point not in self.decisions[run]:
                raise CompareError(
                    f"{kind}: run {run} has no '{FLAG}{point}' column (its decisions at threshold {point})"
                )
            return self.decisions[run][point] == self.positive
        threshold = stats.oracle_thresholds(self.scores[run][None], self.positive)[0]
        return (self.scores[run] >= threshold) == self.positive

    def statistic(self, metric: str, run: str) -> stats.Statistic:
        """The run's metric as a bootstrap statistic idx (R, N) -> (R,)."""
        kind, suffix = parse_metric(metric)
        rows, scores, positive = self.subset(suffix), self.scores[run], self.positive
        if kind == "auroc":
            return lambda idx: stats.auroc_rows(scores[idx[:, rows]], positive[rows])
        if kind != "acc_oracle":
            correct = self.correct(kind, run)
            return lambda idx: correct[idx[:, rows]].mean(axis=1)

        def oracle(idx: np.ndarray) -> np.ndarray:
            thresholds = stats.oracle_thresholds(scores[idx], positive)
            return stats.accuracy_rows(scores[idx[:, rows]], positive[rows], thresholds, strict=False)

        return oracle

    def check(self, metric: str, what: str) -> np.ndarray:
        """The metric's subset (N,) bool, refused when too small: AUROC needs 2 faults and 2 goods."""
        kind, suffix = parse_metric(metric)
        rows = self.subset(suffix)
        n_pos, n_neg = int(self.positive[rows].sum()), int((~self.positive[rows]).sum())
        if (kind == "auroc" and min(n_pos, n_neg) < 2) or n_pos + n_neg == 0:
            raise CompareError(f"{what}: {metric} is undefined on {n_pos} faults and {n_neg} goods")
        return rows


def metric_intervals(
    table: pd.DataFrame, metrics, *, n: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, float]:
    """Bootstrap intervals of one run's metrics (table: its scores table): {m}_ci_lo, {m}_ci_hi (fractions,
    stratified by label x condition, the same resamples for every metric) and, for AUROC metrics, {m}_se
    (DeLong)."""
    images = Images.of(table, "metric_intervals")
    run = next(iter(images.scores))
    idx = stats.stratified_indices(images.strata, n=n, seed=seed)
    out = {}
    for metric in metrics:
        rows = images.check(metric, "metric_intervals")
        statistic = images.statistic(metric, run)
        out[f"{metric}_ci_lo"], out[f"{metric}_ci_hi"] = stats.percentile_interval(
            statistic(idx), level=level
        )
        if metric.startswith("auroc"):
            out[f"{metric}_se"] = stats.delong(images.scores[run][rows], images.positive[rows]).se
    return out


RUN_INTERVALS = ("auroc", "auroc_cold", "auroc_warm", "auroc_cross", "acc_oracle", "acc_oracle_cold")


def _defined(table: pd.DataFrame, metrics, **options) -> dict[str, float]:
    """metric_intervals of the metrics defined on `table` (a subset too small for one is left out)."""
    out = {}
    for metric in metrics:
        try:
            out |= metric_intervals(table, [metric], **options)
        except CompareError:
            continue
    return out


def run_intervals(table: pd.DataFrame, *, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """A job's intervals on one scored part (table: path, condition, label, score, flag_<point>...):
    RUN_INTERVALS, and acc_<point>{,_cold,_warm} for each decision column."""
    points = [c.removeprefix(FLAG) for c in table if c.startswith(FLAG)]
    at_points = [f"acc_{point}{suffix}" for point in points for suffix in SUBSETS["acc"]]
    return _defined(table, [*RUN_INTERVALS, *at_points], n=n, seed=seed)


def _single_p(images: Images, metric: str, run_a: str, run_b: str, rows: np.ndarray) -> float:
    """Paired DeLong (AUROC) or exact McNemar (accuracy) p of one run against one run."""
    kind, _ = parse_metric(metric)
    if kind == "auroc":
        scores = images.scores
        return stats.paired_delong(scores[run_a][rows], scores[run_b][rows], images.positive[rows]).p
    return stats.mcnemar_exact(images.correct(kind, run_a)[rows], images.correct(kind, run_b)[rows]).p


def _mdd(images: Images, metric: str, run_a: str, run_b: str, rows: np.ndarray, base: float) -> float:
    """Minimum detectable difference (80 % power, alpha 0.05) for one seed pair on these images: AUROC from
    the Hanley-McNeil SE at the baseline's value and the pair's DeLong correlation; accuracy from the pair's
    discordance rate (McNemar)."""
    kind, _ = parse_metric(metric)
    positive = images.positive[rows]
    if kind == "auroc":
        pair = stats.paired_delong(images.scores[run_a][rows], images.scores[run_b][rows], positive)
        return stats.mdd_auroc(
            base, int(positive.sum()), int((~positive).sum()), correlation=pair.correlation
        )
    discordant = images.correct(kind, run_a)[rows] != images.correct(kind, run_b)[rows]
    return stats.mdd_accuracy_paired(float(discordant.mean()), int(rows.sum()))


def _signed(points: float) -> str:
    return f"{points:+.2f}".replace("-", "\u2212")


def _p_text(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.3f}" if p >= 0.001 else "<0.001"


def describe(row) -> str:
    """'Δ +1.23 [−0.40, +2.90], p_holm 0.31, 3 seeds × 1000 images' of a comparison row (points)."""
    n_a, n_b = int(row.n_seeds), int(row.n_seeds_baseline)
    seeds = f"{n_a} seed{'' if n_a == 1 else 's'}" if n_a == n_b else f"{n_a} vs {n_b} seeds"
    return (
        f"\u0394 {_signed(100 * row.delta)} [{_signed(100 * row.ci_lo)}, {_signed(100 * row.ci_hi)}], "
        f"p_holm {_p_text(row.p_holm)}, {seeds} \u00d7 {int(row.n_images)} images"
    )


def _run_seeds(pair: pd.DataFrame) -> dict[str, str]:
    """{run: its seed} (as text), {} without a seed column."""
    if "seed" not in pair:
        return {}
    return {str(run): str(seed) for run, seed in pair.groupby("run")["seed"].first().items()}


def _by_seed(runs_a: list[str], runs_b: list[str], seeds: dict[str, str]) -> tuple[list, list, bool]:
    """(runs_a, runs_b, paired): both sorted by seed and paired when they ran the same distinct seeds."""
    seeds_a, seeds_b = [seeds.get(r) for r in runs_a], [seeds.get(r) for r in runs_b]
    paired = None not in seeds_a and sorted(seeds_a) == sorted(seeds_b) and len(set(seeds_a)) == len(seeds_a)
    if not paired:
        return runs_a, runs_b, False
    return sorted(runs_a, key=seeds.get), sorted(runs_b, key=seeds.get), True


def _compare_one(
    images: Images, metric: str, runs_a, runs_b, *, seeds: dict, n: int, seed: int, level: float
) -> dict:
    rows = images.check(metric, f"compare {metric}")
    identity = np.arange(images.positive.size)[None]
    value = {run: float(images.statistic(metric, run)(identity)[0]) for run in (*runs_a, *runs_b)}
    runs_a, runs_b, paired = _by_seed(runs_a, runs_b, seeds)
    interval = stats.hierarchical_bootstrap(
        [images.statistic(metric, run) for run in runs_a],
        [images.statistic(metric, run) for run in runs_b],
        images.strata,
        n=n,
        seed=seed,
        level=level,
        paired=paired,
    )
    single = len(runs_a) == len(runs_b) == 1
    base = float(np.mean([value[run] for run in runs_b]))
    return {
        "value": float(np.mean([value[run] for run in runs_a])),
        "baseline_value": base,
        "delta": interval.estimate,
        "ci_lo": interval.lo,
        "ci_hi": interval.hi,
        "p": _single_p(images, metric, runs_a[0], runs_b[0], rows) if single else interval.p,
        "n_seeds": len(runs_a),
        "n_seeds_baseline": len(runs_b),
        "seeds_paired": paired,
        "n_images": int(rows.sum()),
        "mdd": _mdd(images, metric, runs_a[0], runs_b[0], rows, base)
        if single
        else stats.mdd_of_se(float(np.std(interval.replicates, ddof=1))),
    }


def compare_runs(
    table: pd.DataFrame, metric: str, *, baseline: str, n: int = 2000, seed: int = 0, level: float = 0.95
) -> pd.DataFrame:
    """One row per (variant, domain) against the `baseline` variant's runs of the same domain, on `metric`.

    table: the scores tables of several runs, long, with columns run, variant, seed, domain (one run = one
    seed). Images are paired by path; a variant whose runs were not scored on the baseline's paths is
    refused. Columns: variant, domain, baseline, metric, value / baseline_value (means over seeds), delta
    (their difference), ci_lo, ci_hi (hierarchical bootstrap: seeds, then images; the seeds drawn together
    when both sides ran the same seeds, `seeds_paired`), p (paired DeLong for AUROC
    / exact McNemar for accuracy with one run each, else the hierarchical bootstrap p), p_holm (Holm over the
    table's rows), n_seeds, n_seeds_baseline, n_images, mdd (the smallest delta its test detects at 80 %
    power: from the sizes with one run each, from the hierarchical replicates' SD with several), text
    (points)."""
    parse_metric(metric)
    _require(table, RUN_COLUMNS, "compare")
    if baseline not in set(table["variant"]):
        raise CompareError(f"baseline: no runs of variant {baseline!r}; have {sorted(set(table['variant']))}")
    rows = []
    for domain, in_domain in table.groupby("domain", sort=True):
        runs_b = list(dict.fromkeys(in_domain.loc[in_domain["variant"] == baseline, "run"].astype(str)))
        for variant, of_variant in in_domain.groupby("variant", sort=False):
            if variant == baseline:
                continue
            if not runs_b:
                raise CompareError(f"compare: domain {domain} has runs of {variant} but none of {baseline}")
            runs_a = list(dict.fromkeys(of_variant["run"].astype(str)))
            pair = in_domain[in_domain["run"].astype(str).isin(runs_a + runs_b)].astype({"run": str})
            images = Images.of(pair, f"compare {variant} vs {baseline} ({domain})")
            seeds = _run_seeds(pair)
            result = _compare_one(images, metric, runs_a, runs_b, seeds=seeds, n=n, seed=seed, level=level)
            rows.append(
                {"variant": variant, "domain": domain, "baseline": baseline, "metric": metric, **result}
            )
    if not rows:
        raise CompareError(f"compare: no variant besides the baseline {baseline!r} to compare")
    out = pd.DataFrame(rows)
    out["p_holm"] = stats.holm(out["p"].to_numpy())
    out["text"] = [describe(row) for row in out.itertuples()]
    return out
