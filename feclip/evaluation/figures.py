"""The figures of HDMAP runs, written as PNGs, one per metric family.

One job (`write_figures`, the scored test part): `roc.png` (the AUROC family: all, cold, warm, cross, with the
deployable operating point), `score_histograms.png` (the thresholds: thr_fa1, thr_val, thr_oracle) and
`anomaly_maps.png` (the decisions at the deployable threshold, acc_fa1: per stratum cold good, cold fault,
warm good, warm fault, images picked by score rank, fixed in advance). A sweep (`write_comparison`):
`comparison.png`, each variant's mean and 95 % interval per domain. Training losses are not drawn: the
tracker's charts show them per epoch."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from feclip.data.hdmap import HDMAPData
from feclip.evaluation import plots

STRATA = (("cold", 0), ("cold", 1), ("warm", 0), ("warm", 1))  # (condition, label): the panel's columns
KINDS = {0: "good", 1: "fault"}
OUTCOMES = {(1, True): "hit", (1, False): "miss", (0, True): "false positive", (0, False): "true negative"}
OUTCOME_COLOURS = {
    "hit": "tab:green",
    "miss": "tab:red",
    "false positive": "tab:purple",
    "true negative": "black",
}
DECISION_POINTS = ("fa1", "fa5", "val")  # the decision the map panel shows: the first the run has
COMPARISON_METRICS = ("auroc", "auroc_cold", "acc_fa1", "acc_fa1_cold")  # the sweep figure's rows
COMPARISON_FILE = "comparison.png"
DPI = 110


def decision_point(meta: pd.DataFrame) -> str | None:
    """The threshold the map panel shows decisions at: fa1 (deployable: 1 % false alarms on never-scored
    normals), else the first other `flag_<point>` column of `meta`; None without one."""
    flags = [c.removeprefix("flag_") for c in meta.columns if c.startswith("flag_")]
    return next((p for p in DECISION_POINTS if p in flags), flags[0] if flags else None)


def rank_positions(n: int, k: int) -> list[tuple[str, int]]:
    """`k` positions spread evenly over `n` images sorted by score, highest first: (label, position), without
    repeats (fewer than k when n < k). k = 1: the median; k = 3: highest, median, lowest."""
    if n == 0:
        return []
    spots = [(n - 1) // 2] if k == 1 else [i * (n - 1) // (k - 1) for i in range(k)]
    named = {(n - 1) // 2: "median", n - 1: "lowest", 0: "highest" if n > 1 else "only"}
    found = {}
    for spot in spots:
        found.setdefault(spot, named.get(spot, f"rank {spot + 1}/{n}"))
    return [(label, spot) for spot, label in found.items()]


def pick_examples(meta: pd.DataFrame, per_stratum: int, point: str | None) -> pd.DataFrame:
    """The map panel's images, fixed in advance: per stratum (`STRATA`: cold good, cold fault, warm good, warm
    fault) its images sorted by score, highest first (ties: file index), at `per_stratum` ranks spread evenly
    from the highest to the lowest (`rank_positions`). One row per image: stratum (0-3), rank (0..),
    rank_label, position (its row in `meta`), outcome at `flag_<point>` (hit, miss, false positive, true
    negative; '' when `point` is None)."""
    rows = []
    labels, conditions = meta["label"].to_numpy().astype(int), meta["condition"].to_numpy().astype(str)
    flags = meta[f"flag_{point}"].to_numpy().astype(bool) if point else None
    for stratum, (condition, label) in enumerate(STRATA):
        members = np.flatnonzero((conditions == condition) & (labels == label))
        keys = meta.iloc[members]
        order = members[np.lexsort((keys["file_index"].to_numpy(), -keys["score"].to_numpy()))]
        for rank, (rank_label, spot) in enumerate(rank_positions(len(order), per_stratum)):
            position = int(order[spot])
            outcome = "" if flags is None else OUTCOMES[label, bool(flags[position])]
            rows.append((stratum, rank, rank_label, position, outcome))
    return pd.DataFrame(rows, columns=["stratum", "rank", "rank_label", "position", "outcome"])


def image_thresholds(meta: pd.DataFrame, metrics: Mapping[str, float], point: str) -> np.ndarray | None:
    """(N,) the threshold each image was decided at by `flag_<point>`: thr_<point>_<group> by the gate's
    routing or the condition where the run had per-condition thresholds, else thr_<point>; the first of these
    that reproduces the flags, None when none does."""
    scores, flags = meta["score"].to_numpy(float), meta[f"flag_{point}"].to_numpy().astype(bool)
    candidates = [
        np.array([metrics.get(f"thr_{point}_{group}", np.nan) for group in meta[column].astype(str)], float)
        for column in ("gate", "condition")
        if column in meta
    ]
    candidates.append(np.full(len(meta), metrics.get(f"thr_{point}", np.nan), float))
    for limits in candidates:
        if np.isfinite(limits).all() and np.array_equal(scores > limits, flags):
            return limits
    return None


def _stratum_header(meta: pd.DataFrame, stratum: int, point: str | None) -> str:
    """'cold fault (n=400)' over 'hits at thr_fa1: 148 (37.0 %)' (goods: false positives)."""
    condition, label = STRATA[stratum]
    rows = (meta["condition"].astype(str) == condition).to_numpy() & (meta["label"].to_numpy() == label)
    header = f"{condition} {KINDS[label]} (n={rows.sum()})"
    if point is None or not rows.any():
        return header
    flagged = int(meta[f"flag_{point}"].to_numpy().astype(bool)[rows].sum())
    what = "hits" if label else "false positives"
    return f"{header}\n{what} at thr_{point}: {flagged} ({100 * flagged / rows.sum():.1f} %)"


def _decision(meta: pd.DataFrame, pick, point: str | None, limits: np.ndarray | None) -> str:
    """'highest · #0123 · MISS' over 'score 0.512 ≤ thr_fa1 0.530'."""
    row = meta.iloc[pick.position]
    head = f"{pick.rank_label} · #{int(row['file_index'])}" + (
        f" · {pick.outcome.upper()}" if pick.outcome else ""
    )
    if point is None:
        return f"{head}\nscore {row['score']:.4g}"
    flagged = bool(row[f"flag_{point}"])
    if limits is None:
        return f"{head}\nscore {row['score']:.4g} ({'flagged' if flagged else 'passed'} at thr_{point})"
    return (
        f"{head}\nscore {row['score']:.4g} {'>' if flagged else '≤'} thr_{point} {limits[pick.position]:.4g}"
    )


def _map_figure(scored: HDMAPData, metrics: Mapping[str, float], per_stratum: int, **text):
    """The stratified map panel of the scored part (`pick_examples`), decisions at `decision_point`."""
    meta = scored.meta
    point = decision_point(meta)
    picks = pick_examples(meta, per_stratum, point)
    limits = image_thresholds(meta, metrics, point) if point else None
    chosen = scored.subset(picks["position"].to_numpy())
    images, maps = plots.as_numpy(chosen.images), plots.as_numpy(chosen.maps)
    masks = None if chosen.masks is None else plots.as_numpy(chosen.masks)
    examples = [
        plots.MapExample(
            images[i],
            maps[i],
            column=pick.stratum,
            row=pick.rank,
            title=_decision(meta, pick, point, limits),
            colour=OUTCOME_COLOURS.get(pick.outcome, "black"),
            fault_rows=plots.mask_rows(masks[i]) if masks is not None else (),
        )
        for i, pick in enumerate(picks.itertuples())
    ]
    if not examples:
        raise plots.PlotError("the scored part has no images; expected at least one for the map panel")
    where = f"decisions at thr_{point}" if point else "no decision column"
    note = (
        f"{where}; per stratum its images by score, evenly spaced ranks from the highest to the lowest "
        f"({per_stratum} per stratum, fixed in advance)"
    )
    columns = [_stratum_header(meta, s, point) for s in range(len(STRATA))]
    n_rows = int(picks["rank"].max()) + 1
    return plots.map_panel(examples, columns, n_rows, note=note, **text)


def _thresholds(metrics: Mapping[str, float]) -> dict[str, float]:
    """The histogram's threshold lines: thr_fa1 (global or per condition), thr_val, the oracle's."""
    names = {
        "thr_fa1": "fa1 (deployable)",
        "thr_fa1_cold": "fa1 cold (deployable)",
        "thr_fa1_warm": "fa1 warm (deployable)",
        "thr_val": "val",
        "thr_oracle": "oracle (reads the test labels)",
    }
    return {name: metrics[key] for key, name in names.items() if np.isfinite(metrics.get(key, np.nan))}


def _operating_points(metrics: Mapping[str, float], point: str = "fa1") -> dict[str, tuple[float, float]]:
    """{all, cold, warm: (far_<point>, tpr_<point>)} realised on the scored part, where logged."""
    suffixes = {"all": "", "cold": "_cold", "warm": "_warm"}
    return {
        subset: (metrics[f"far_{point}{s}"], metrics[f"tpr_{point}{s}"])
        for subset, s in suffixes.items()
        if f"far_{point}{s}" in metrics and f"tpr_{point}{s}" in metrics
    }


def write_figures(
    directory: Path, scored: HDMAPData, metrics: dict, *, caption: str, n_examples: int, title: str = ""
) -> list[Path]:
    """Write roc.png, score_histograms.png and anomaly_maps.png under `directory`; returns their paths.

    scored: the scored test part (meta with `score`, `label`, `condition`, `file_index`, `flag_<point>`; maps
    (N, H, W); masks (N, H, W) when known); metrics: the run's (thr_, far_, tpr_ of the test part);
    n_examples: images in the map panel, ceil(n / 4) per stratum; title: e.g. "C · fft · random-init";
    caption: e.g. the random-init note."""
    directory.mkdir(parents=True, exist_ok=True)
    meta, text = scored.meta, {"caption": caption, "title": title}
    scores, labels, condition = (meta[c].to_numpy() for c in ("score", "label", "condition"))
    points = _operating_points(metrics)
    figures = {
        "roc.png": plots.roc_curves(
            scores,
            labels,
            condition,
            operating_points=points,
            operating_label="at thr_fa1 (deployable)",
            **text,
        ),
        "score_histograms.png": plots.score_histograms(
            scores, labels, condition, _thresholds(metrics), **text
        ),
        "anomaly_maps.png": _map_figure(scored, metrics, math.ceil(n_examples / len(STRATA)), **text),
    }
    for name, figure in figures.items():
        figure.savefig(directory / name, dpi=DPI)
    return [directory / name for name in figures]


def write_comparison(directory: Path, tables: Mapping[str, pd.DataFrame], *, title: str = "") -> Path | None:
    """`directory`/comparison.png: the sweep's variants per domain, mean and 95 % interval, for the
    `COMPARISON_METRICS` among `tables` ({metric: report.variant_domain_table}, whose attrs carry `numbers`);
    None when there is none. Runs with a random-init backbone are named in red."""
    shown = {
        m: tables[m] for m in COMPARISON_METRICS if m in tables and len(tables[m].attrs.get("numbers", ()))
    }
    if not shown:
        return None
    numbers = {f"{m} (x100)": table.attrs["numbers"] for m, table in shown.items()}
    domains = sorted({d for frame in numbers.values() for d in frame["domain"]})
    first = next(iter(shown.values()))
    flagged, n_runs = first.attrs.get("random_init", 0), first.attrs.get("n_runs", 0)
    caption = (
        f"{flagged} of {n_runs} runs random-init: numbers test the pipeline, not FE-CLIP" if flagged else ""
    )
    heading = title or f"sweep {first.attrs.get('experiment') or ''}: test part, variant x domain".strip()
    figure = plots.variant_intervals(numbers, domains, caption=caption, title=heading)
    directory.mkdir(parents=True, exist_ok=True)
    figure.savefig(directory / COMPARISON_FILE, dpi=DPI)
    return directory / COMPARISON_FILE
