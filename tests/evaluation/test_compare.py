"""feclip.evaluation.compare on hand-built score tables whose deltas, signs and pairing are known, against
`hdmap_metrics` and the tests of `feclip.evaluation.stats`."""

import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from feclip.evaluation import stats
from feclip.evaluation.compare import CompareError, compare_runs, describe, metric_intervals, parse_metric
from feclip.evaluation.metrics import hdmap_metrics

# the metrics' hand case: 0.1 good(c), 0.35 fault(c), 0.5 good(w), 0.6 good(w), 0.7 good(c) / 0.7 fault(w),
# 0.8 fault(c), 0.9 fault(w); AUROC 12.5 / 16
SCORES = np.array([0.1, 0.7, 0.35, 0.8, 0.5, 0.6, 0.7, 0.9])
LABELS = np.array([0, 0, 1, 1, 0, 0, 1, 1])
CONDITION = np.array(["cold"] * 4 + ["warm"] * 4)
PATHS = np.array([f"d1/img{i}.png" for i in range(8)])


def run_table(
    run, variant, scores, *, seed=0, domain="d1", labels=LABELS, condition=CONDITION, paths=PATHS, **extra
):
    """One run's scores table (the columns of scores.csv plus run, variant, seed, domain)."""
    return pd.DataFrame(
        {
            "run": run,
            "variant": variant,
            "seed": seed,
            "domain": domain,
            "path": paths,
            "split": "test",
            "file_index": np.arange(len(paths)),
            "condition": condition,
            "label": labels,
            "score": scores,
            **extra,
        }
    )


def synthetic(n=200, seed=0):
    """(labels (n,), condition (n,), paths (n,), truth (n,)): binormal, half faults, half cold."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(int)
    condition = np.where(np.arange(n) % 4 < 2, "cold", "warm")
    return (
        labels,
        condition,
        np.array([f"x/{i:04d}.png" for i in range(n)]),
        rng.normal(size=n) + 1.2 * labels,
    )


def test_delta_sign_and_value_from_hand_tables():
    perfect = np.where(LABELS == 1, 1.0, 0.0) + 0.01 * np.arange(8)
    table = pd.concat([run_table("r_base", "base", SCORES), run_table("r_new", "new", perfect).iloc[::-1]])
    row = compare_runs(table, "auroc", baseline="base", n=200).iloc[0]
    assert (row.variant, row.domain, row.baseline, row.metric) == ("new", "d1", "base", "auroc")
    assert row.value == 1.0 and row.baseline_value == pytest.approx(12.5 / 16)
    assert row.delta == pytest.approx(1 - 12.5 / 16)
    assert row.p == pytest.approx(stats.paired_delong(perfect, SCORES, LABELS == 1).p)
    assert (row.n_seeds, row.n_seeds_baseline, row.n_images) == (1, 1, 8)
    flipped = compare_runs(
        table.replace({"variant": {"base": "new", "new": "base"}}), "auroc", baseline="base", n=200
    )
    assert flipped.delta.iloc[0] == pytest.approx(-row.delta)


def test_images_are_paired_by_path_not_by_row():
    labels, condition, paths, truth = synthetic()
    base = run_table("a", "base", truth, labels=labels, condition=condition, paths=paths)
    shuffled = base.assign(run="b", variant="same").sample(frac=1.0, random_state=0)
    row = compare_runs(pd.concat([base, shuffled]), "auroc", baseline="base", n=300).iloc[0]
    assert (row.delta, row.ci_lo, row.ci_hi, row.p) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "metric", ["acc_oracle", "acc_oracle_cold", "acc_oracle_warm", "auroc_cold", "auroc_cross"]
)
def test_delta_equals_the_difference_of_hdmap_metrics(metric):
    labels, condition, paths, truth = synthetic()
    rng = np.random.default_rng(1)
    a, b = truth + 0.3 * rng.normal(size=truth.size), truth + 0.8 * rng.normal(size=truth.size)
    table = pd.concat(
        [
            run_table(r, v, s, labels=labels, condition=condition, paths=paths)
            for r, v, s in [("A", "a", a), ("B", "b", b)]
        ]
    )
    row = compare_runs(table, metric, baseline="b", n=300).iloc[0]
    expected = hdmap_metrics(a, labels, condition)[metric] - hdmap_metrics(b, labels, condition)[metric]
    assert row.delta == pytest.approx(expected, abs=1e-12)
    assert row.ci_lo <= row.delta <= row.ci_hi
    assert row.n_images == {"_cold": 100, "_warm": 100, "_cross": 100}.get(parse_metric(metric)[1], 200)


def test_acc_val_uses_the_decisions_and_exact_mcnemar():
    labels, condition, paths, truth = synthetic(n=40)
    right = labels == 1
    wrong_b = np.zeros(40, bool)
    wrong_b[[0, 1, 2, 3, 4, 5, 6]] = True  # b wrong on 7 images, a wrong on 2 of them and on image 10
    wrong_a = np.zeros(40, bool)
    wrong_a[[0, 1, 10]] = True
    table = pd.concat(
        [
            run_table(
                "A", "a", truth, labels=labels, condition=condition, paths=paths, decision=right ^ wrong_a
            ),
            run_table(
                "B", "b", truth, labels=labels, condition=condition, paths=paths, decision=right ^ wrong_b
            ),
        ]
    )
    row = compare_runs(table, "acc_val", baseline="b", n=300).iloc[0]
    assert row.delta == pytest.approx((7 - 3) / 40)
    assert row.p == pytest.approx(sps.binomtest(5, 6, 0.5).pvalue)  # a alone right on 5, b alone right on 1
    assert row.mdd == pytest.approx(stats.mdd_accuracy_paired(6 / 40, 40))
    with pytest.raises(CompareError, match="acc_val: run A has no 'flag_val' column"):
        compare_runs(table.drop(columns="decision"), "acc_val", baseline="b")


def test_several_seeds_give_the_mean_delta_and_the_hierarchical_p():
    labels, condition, paths, truth = synthetic()
    rng = np.random.default_rng(2)
    runs = []
    for seed in range(3):
        for variant, shift in (("new", 0.6), ("base", 0.0)):
            scores = truth + shift * labels + 0.5 * rng.normal(size=truth.size)
            runs.append(
                run_table(
                    f"{variant}{seed}",
                    variant,
                    scores,
                    seed=seed,
                    labels=labels,
                    condition=condition,
                    paths=paths,
                )
            )
    table = pd.concat(runs)
    row = compare_runs(table, "auroc", baseline="base", n=500, seed=1).iloc[0]
    aurocs = {run: hdmap_metrics(t.score, labels, condition)["auroc"] for run, t in table.groupby("run")}
    expected = np.mean([aurocs[f"new{s}"] for s in range(3)]) - np.mean(
        [aurocs[f"base{s}"] for s in range(3)]
    )
    assert row.delta == pytest.approx(expected, abs=1e-12) and row.delta > 0
    assert (row.n_seeds, row.n_seeds_baseline) == (3, 3)
    assert row.p < 0.05 and 0 < row.ci_lo < row.delta < row.ci_hi
    assert row.text.endswith(", 3 seeds × 200 images")
    sd = (row.ci_hi - row.ci_lo) / (2 * 1.96)  # the replicates' SD, about
    assert row.mdd == pytest.approx(2.801585 * sd, rel=0.15)


def test_refuses_runs_scored_on_different_paths():
    other = PATHS.copy()
    other[3] = "d1/elsewhere.png"
    table = pd.concat([run_table("r_base", "base", SCORES), run_table("r_new", "new", SCORES, paths=other)])
    with pytest.raises(
        CompareError, match=r"runs \['r_base', 'r_new'\] were not scored on the same set of paths"
    ):
        compare_runs(table, "auroc", baseline="base")
    short = pd.concat([run_table("r_base", "base", SCORES), run_table("r_new", "new", SCORES).iloc[:7]])
    with pytest.raises(CompareError, match="r_new: 7 images"):
        compare_runs(short, "auroc", baseline="base")


def test_holm_column_over_variants_and_domains():
    labels, condition, paths, truth = synthetic(n=120)
    rng = np.random.default_rng(3)
    runs = []
    for domain in ("d1", "d2"):
        for variant, shift in (("base", 0.0), ("v1", 0.1), ("v2", 0.6), ("v3", 1.2)):
            scores = truth + shift * labels + 0.7 * rng.normal(size=truth.size)
            runs.append(
                run_table(
                    f"{domain}-{variant}",
                    variant,
                    scores,
                    domain=domain,
                    labels=labels,
                    condition=condition,
                    paths=paths,
                )
            )
    out = compare_runs(pd.concat(runs), "auroc", baseline="base", n=200)
    assert len(out) == 6 and list(out.domain) == ["d1"] * 3 + ["d2"] * 3
    np.testing.assert_allclose(out.p_holm, stats.holm(out.p))
    ordered = out.sort_values("p")
    assert (np.diff(ordered.p_holm) >= 0).all() and (out.p_holm >= out.p).all() and (out.p_holm <= 1).all()


def test_text_format():
    row = pd.Series(
        dict(
            delta=0.0123, ci_lo=-0.004, ci_hi=0.029, p_holm=0.31, n_seeds=3, n_seeds_baseline=3, n_images=1000
        )
    )
    assert describe(row) == "Δ +1.23 [−0.40, +2.90], p_holm 0.31, 3 seeds × 1000 images"
    row = row.copy()
    row.update(dict(delta=-0.05, p_holm=0.0004, n_seeds=1, n_seeds_baseline=1))
    assert describe(row) == "Δ −5.00 [−0.40, +2.90], p_holm <0.001, 1 seed × 1000 images"
    table = pd.concat([run_table("r_base", "base", SCORES), run_table("r_new", "new", SCORES[::-1].copy())])
    text = compare_runs(table, "auroc", baseline="base", n=100).text.iloc[0]
    assert re.fullmatch(
        r"Δ [+−]\d+\.\d\d \[[+−]\d+\.\d\d, [+−]\d+\.\d\d\], p_holm (\d\.\d\d\d?|<0\.001), 1 seed × 8 images",
        text,
    )


def test_unknown_metric_and_baseline_are_one_line_errors():
    table = pd.concat([run_table("r_base", "base", SCORES), run_table("r_new", "new", SCORES)])
    with pytest.raises(
        CompareError, match="metric: unknown 'acc_oracle_cross'; expected one of auroc, auroc_cold"
    ):
        compare_runs(table, "acc_oracle_cross", baseline="base")
    with pytest.raises(CompareError, match="baseline: no runs of variant 'nope'"):
        compare_runs(table, "auroc", baseline="nope")
    with pytest.raises(CompareError, match="compare: domain d2 has runs of new but none of base"):
        compare_runs(
            pd.concat([table, run_table("r2", "new", SCORES, domain="d2")]), "auroc", baseline="base"
        )
    with pytest.raises(CompareError, match="no variant besides the baseline 'base'"):
        compare_runs(table[table.variant == "base"], "auroc", baseline="base")
    with pytest.raises(CompareError, match="auroc_cold is undefined on 2 faults and 1 goods"):
        compare_runs(table.drop(index=[0]), "auroc_cold", baseline="base")


def test_metric_intervals_of_one_run():
    labels, condition, paths, truth = synthetic()
    decision = truth > 0.6
    table = run_table("A", "a", truth, labels=labels, condition=condition, paths=paths, decision=decision)
    metrics = ["auroc", "auroc_warm", "acc_oracle", "acc_val_cold"]
    out = metric_intervals(table, metrics, n=500, seed=0)
    assert set(out) == {f"{m}_ci_{end}" for m in metrics for end in ("lo", "hi")} | {
        "auroc_se",
        "auroc_warm_se",
    }
    values = hdmap_metrics(truth, labels, condition)
    values["acc_val_cold"] = np.mean((decision == labels)[condition == "cold"])
    for metric in metrics:
        assert out[f"{metric}_ci_lo"] < values[metric] < out[f"{metric}_ci_hi"]
    assert out["auroc_se"] == stats.delong(truth, labels == 1).se
    # the 95 % interval is about +-1.96 DeLong SE wide
    assert (out["auroc_ci_hi"] - out["auroc_ci_lo"]) / (2 * 1.96 * out["auroc_se"]) == pytest.approx(
        1, abs=0.2
    )


def test_variants_run_with_the_same_seeds_are_compared_seed_by_seed():
    """Each seed sets how well both variants separate (a shared random-init backbone); variant a adds the
    same gain on every seed. Drawn together the seeds cancel: a narrow paired interval above 0."""
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 40)
    condition = np.tile(["cold", "warm"], 40)
    paths = [f"img{i:03d}" for i in range(80)]
    runs = []
    for seed, signal in enumerate((0.3, 0.9, 1.5)):
        noise = rng.normal(0, 1.0, 80)
        for variant, gain in (("a", 0.4), ("b", 0.0)):
            scores = (signal + gain) * labels + noise
            kwargs = {"labels": labels, "condition": condition, "paths": paths, "seed": seed}
            runs.append(run_table(f"{variant}{seed}", variant, scores, **kwargs))
    row = compare_runs(pd.concat(runs), "auroc", baseline="b", n=500).iloc[0]
    assert bool(row.seeds_paired) and row.ci_lo > 0
    unpaired = pd.concat(runs).assign(seed=lambda t: t["run"])  # no two runs share a seed
    other = compare_runs(unpaired, "auroc", baseline="b", n=500).iloc[0]
    assert not bool(other.seeds_paired) and other.ci_hi - other.ci_lo > 2 * (row.ci_hi - row.ci_lo)
