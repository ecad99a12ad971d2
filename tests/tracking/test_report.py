"""feclip.report and scripts/report.py on fabricated runs logged into a tmp sqlite store."""

import importlib.util
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps
from mlflow import MlflowClient

from feclip.tracking import report
from feclip.tracking.report import ReportError
from feclip.tracking.sweep import study_summary

SCRIPT = Path(__file__).parents[2] / "scripts" / "report.py"
WINCLIP_ROW = "anchor: WinCLIP 0-shot 'industrial sensor data' (rivals.md 4.2)"
PATCHCORE_ROW = "anchor: PatchCore full 1000-train (rivals.md 3.2)"
CPD_ROW = "anchor: CPD-PatchCore 2-layer multi-k, 32-shot (rivals.md 6.2)"


def _log(client, exp_id, start, variant, domain, seed, metrics, status="FINISHED", backbone="tiny", **tags):
    tags = {
        "variant": variant,
        "domain": domain,
        "seed": str(seed),
        "backbone": backbone,
        "feclip.random_init": str(backbone == "tiny").lower(),
        **tags,
    }
    run = client.create_run(exp_id, start_time=start, tags=tags, run_name=f"{domain}-{variant}")
    for key, value in metrics.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Experiment `rep` (tiny, random init): dct on A (2 seeds), B, C, D; fft on C (plus an older rerun that
    the newer one supersedes); a failed run and a sweep parent run that must not count.
    Experiment `rep_pretrained`: one run of a pretrained backbone, children of one parent."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('report') / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("rep")
    rows = [
        ("dct", "A", 0, 0.90, 0.95),
        ("dct", "A", 1, 0.92, 0.97),
        ("dct", "B", 0, 0.80, 0.85),
        ("dct", "C", 0, 0.70, 0.75),
        ("dct", "D", 0, 0.61, 0.66),
        ("fft", "C", 0, 0.10, 0.1),
        ("fft", "C", 0, 0.50, 0.55),
    ]
    for start, (variant, domain, seed, auroc, acc) in enumerate(rows):
        _log(
            client,
            exp,
            1000 + start,
            variant,
            domain,
            seed,
            {"auroc": auroc, "acc_oracle": acc, "acc_val": acc},
        )
    _log(client, exp, 2000, "dct", "B", 1, {"auroc": 0.0}, status="FAILED")
    _log(client, exp, 2001, "sweep", "", "", {"auroc": 0.99}, **{"feclip.parent": "true"})
    pretrained = client.create_experiment("rep_pretrained")
    parent = _log(client, pretrained, 1, "sweep", "", "", {}, **{"feclip.parent": "true"})
    _log(
        client,
        pretrained,
        2,
        "dct",
        "C",
        0,
        {"auroc": 0.93},
        backbone="vit_l14_336",
        **{"mlflow.parentRunId": parent},
    )
    _log(client, pretrained, 3, "fft", "C", 0, {"auroc": 0.91}, backbone="vit_l14_336")
    return {"uri": uri, "parent": parent}


def test_collect_runs_keeps_finished_job_runs_newest_rerun(store):
    runs = report.collect_runs(store["uri"], "rep")
    assert len(runs) == 6 and runs.attrs["superseded"] == 1
    assert set(runs["variant"]) == {"feclip·dct", "feclip·fft"}
    assert runs.loc[runs["variant"] == "feclip·fft", "auroc"].tolist() == [0.5]  # the newer rerun
    assert runs["random_init"].all() and {"auroc", "acc_oracle", "acc_val"} <= set(runs.columns)


def test_collect_runs_of_one_parent(store):
    runs = report.collect_runs(store["uri"], "rep_pretrained", parent_run_id=store["parent"])
    assert runs["variant"].tolist() == ["feclip·dct"]


def test_collect_runs_errors(store, tmp_path):
    with pytest.raises(ReportError, match="no MLflow experiment 'nope' .*existing: .*rep"):
        report.collect_runs(store["uri"], "nope")
    with pytest.raises(ReportError, match="does not exist"):
        report.collect_runs(f"sqlite:///{tmp_path}/none.db", "rep")
    assert not (tmp_path / "none.db").exists()


def test_auroc_table_cells_mean_and_anchors(store):
    table = report.variant_domain_table(report.collect_runs(store["uri"], "rep"), "auroc")
    half = 100 * sps.t.ppf(0.975, 1) * np.std([0.90, 0.92], ddof=1) / np.sqrt(2)  # no logged intervals
    two_seeds = f"91.0 [{91.0 - half:.1f}, {91.0 + half:.1f}] (n=2)"
    assert table.loc["feclip·dct"].tolist() == [two_seeds, "80.0", "70.0", "61.0", "75.5"]
    assert table.loc["feclip·fft"].tolist() == ["–", "–", "50.0", "–", "50.0 (C only)"]
    assert table.loc[WINCLIP_ROW].tolist() == ["81.93", "81.32", "73.05", "80.86", "79.29"]
    assert table.loc[PATCHCORE_ROW].tolist() == ["99.85", "99.82", "98.21", "99.77", "99.41"]  # mean computed
    assert table.loc[CPD_ROW, "C"] == "99.67"
    assert any("80% test subset" in row for row in table.index)
    assert table.attrs["random_init"] == 6 and table.attrs["backbones"] == {"tiny": 6}


def test_anchors_only_under_their_metric(store):
    runs = report.collect_runs(store["uri"], "rep")
    oracle = report.variant_domain_table(runs, "acc_oracle")
    assert oracle.loc[PATCHCORE_ROW].tolist()[:4] == ["99.09", "99.19", "94.75", "98.99"]
    assert oracle.loc[CPD_ROW].tolist() == ["99.70", "99.80", "97.68", "99.90", "99.27"]
    assert WINCLIP_ROW not in oracle.index
    deployable = report.variant_domain_table(runs, "acc_val")
    assert list(deployable.index) == [
        "feclip·dct",
        "feclip·fft",
    ]  # no published number uses a deployable threshold
    with pytest.raises(ReportError, match="metric 'f1_max' was logged by none of the 6 runs"):
        report.variant_domain_table(runs, "f1_max")


def test_mixed_backbones_get_separate_rows_and_std_is_sample_std():
    runs = pd.DataFrame(
        {
            "variant": ["dct"] * 4,
            "domain": ["A", "A", "A", "B"],
            "seed": ["0", "1", "2", "0"],
            "backbone": ["tiny", "tiny", "tiny", "vit_b16"],
            "random_init": [True, True, True, False],
            "thr_oracle": [0.5, 0.6, 0.7, 0.2],
        }
    )
    table = report.variant_domain_table(runs, "thr_oracle", digits=2)  # not a rate: not x100
    half = sps.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
    assert table.loc["dct [tiny]", "A"] == f"0.60 [{0.6 - half:.2f}, {0.6 + half:.2f}] (n=3)"
    assert table.loc["dct [vit_b16]"].tolist() == ["–", "0.20", "–", "–", "0.20 (B only)"]


def test_write_report_markdown_csv_and_random_init_warning(store, tmp_path):
    runs = report.collect_runs(store["uri"], "rep")
    tables = {m: report.variant_domain_table(runs, m) for m in ("auroc", "acc_oracle")}
    path = report.write_report(tables, tmp_path / "out", runs)
    text = path.read_text()
    assert "**Warning: 6 of 6 runs used a random-init backbone" in text and "not FE-CLIP.**" in text
    assert "Backbone: tiny (6 runs)" in text and "1 older reruns left out" in text
    row = " | ".join(["feclip·dct", *tables["auroc"].loc["feclip·dct"]])
    assert "## auroc (x100)\n" in text and f"| {row} |" in text
    assert "## acc_oracle (x100), ORACLE threshold: chosen on the test labels" in text
    assert f"- `{PATCHCORE_ROW}`: docs/rivals.md 3.2" in text and "compare with acc_oracle" in text
    csv = pd.read_csv(tmp_path / "out" / "auroc.csv")  # numbers in columns, no "±" strings
    assert list(csv.columns) == ["variant", "domain", "mean", "lo", "hi", "n", "seed_invariant"]
    cell = csv[(csv["variant"] == "feclip·dct") & (csv["domain"] == "A")].iloc[0]
    assert (cell["mean"], cell["n"]) == (pytest.approx(91.0), 2) and cell["lo"] < 91.0 < cell["hi"]
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 6


def test_pretrained_report_has_no_warning(store, tmp_path):
    runs = report.collect_runs(store["uri"], "rep_pretrained")
    text = report.write_report({"auroc": report.variant_domain_table(runs, "auroc")}, tmp_path).read_text()
    assert "Warning" not in text and "Backbone: vit_l14_336 (2 runs)" in text


def _script():
    spec = importlib.util.spec_from_file_location("report_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_report_and_fails_in_one_line(store, tmp_path, capsys):
    script = _script()
    out = tmp_path / "report"
    args = ["--uri", store["uri"], "--experiment", "rep", "--metrics", "auroc", "acc_val", "--out", str(out)]
    assert script.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["acc_val.csv", "auroc.csv", "report.md", "runs.csv"]
    assert script.main(["--uri", store["uri"], "--experiment", "missing", "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("report: error: no MLflow experiment 'missing'") and error.count("\n") == 1


def test_cli_refuses_an_out_that_is_a_file_before_reading_the_store(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    args = [
        "--uri",
        f"sqlite:///{tmp_path / 'none.db'}",
        "--experiment",
        "x",
        "--out",
        str(tmp_path / "taken"),
    ]
    assert _script().main(args) == 2
    assert capsys.readouterr().err == (
        f"report: error: --out='{tmp_path / 'taken'}' is a file; "
        "expected a folder (or a path that can be created)\n"
    )
    assert not (tmp_path / "none.db").exists()


def test_anchor_means_match_published_means():
    for anchor in report.ANCHORS:
        if anchor.mean is not None and "–" not in anchor.values:
            computed = sum(map(float, anchor.values)) / 4
            assert math.isclose(computed, float(anchor.mean), abs_tol=0.011), anchor.row


def test_runs_of_another_precision_are_another_row_never_pooled_as_seeds(tmp_path):
    """An fp32 and a bf16 run of one variant and seed: both kept by collect_runs, two rows in the table."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("precisions")
    for start, (name, auroc) in enumerate([("fp32", 0.40), ("bf16", 0.20)]):
        _log(client, exp, start, "default", "C", 0, {"auroc": auroc}, precision=name, device="cpu")
    runs = report.collect_runs(uri, "precisions")
    assert len(runs) == 2 and runs.attrs["superseded"] == 0
    table = report.variant_domain_table(runs, "auroc")
    assert table.loc["feclip·default [fp32]", "C"] == "40.0"
    assert table.loc["feclip·default [bf16]", "C"] == "20.0"


def _study_runs(**columns) -> pd.DataFrame:
    """Report rows of domain C, variant `dct`, one per seed, with the given columns."""
    n = len(next(iter(columns.values())))
    base = {
        "variant": ["feclip·dct"] * n,
        "domain": ["C"] * n,
        "seed": [str(i) for i in range(n)],
        "backbone": ["tiny"] * n,
        "random_init": [True] * n,
        "run_name": [f"C-seed={i}" for i in range(n)],
    }
    return pd.DataFrame({**base, **columns})


def test_one_run_shows_its_bootstrap_interval_and_seeds_add_the_image_noise():
    one = _study_runs(auroc=[0.8], auroc_ci_lo=[0.75], auroc_ci_hi=[0.85])
    assert report.variant_domain_table(one, "auroc").loc["feclip·dct", "C"] == "80.0 [75.0, 85.0]"
    three = _study_runs(auroc=[0.80, 0.82, 0.84], auroc_ci_lo=[0.75] * 3, auroc_ci_hi=[0.85] * 3)
    se = 0.10 / (2 * 1.959964)
    half = 1.959964 * np.sqrt(0.02**2 / 3 + se**2)
    expected = f"82.0 [{100 * (0.82 - half):.1f}, {100 * (0.82 + half):.1f}] (n=3)"
    assert report.variant_domain_table(three, "auroc").loc["feclip·dct", "C"] == expected


def test_seed_invariant_cells_are_named():
    runs = _study_runs(acc_oracle=[0.9, 0.9, 0.9], acc_oracle_ci_lo=[0.88] * 3, acc_oracle_ci_hi=[0.92] * 3)
    assert (
        report.variant_domain_table(runs, "acc_oracle")
        .loc["feclip·dct", "C"]
        .endswith("(n=3, seed-invariant)")
    )


def test_runs_scored_on_other_images_are_left_out_with_one_line_and_labels_read_test_labels():
    runs = _study_runs(auroc=[0.8, 0.7, 0.6], eval_set=["a1", "a1", "b2"], deployable=[True, True, False])
    runs.loc[1, "variant"] = "patchcore·tiny"
    table = report.variant_domain_table(runs, "auroc")
    assert list(table.index[:2]) == ["feclip·dct", "patchcore·tiny"]
    (line,) = table.attrs["left_out"]
    assert "left out of domain C: C-seed=2 (eval_set b2)" in line and "the 2 runs of eval_set a1" in line
    runs["eval_set"] = "a1"
    labels = report.variant_domain_table(runs, "auroc").index
    assert "feclip·dct NOT DEPLOYABLE" in labels and "feclip·dct" in labels


def test_a_baseline_is_named_by_its_label_typed_with_a_dot_or_a_unique_prefix():
    runs = pd.DataFrame(
        {"variant": ["feclip·dct-lam=0.3", "patchcore·dinov2_vitb14-cpd-k=16", "patchcore·tiny"]}
    )
    for typed in ("patchcore·tiny", "patchcore.tiny", "patchcore · tiny", "patchcore.ti"):
        assert report.baseline_label(runs, typed) == "patchcore·tiny"
    assert report.baseline_label(runs, "feclip.dct-lam=0.3") == "feclip·dct-lam=0.3"
    assert report.baseline_label(runs, "patchcore.dinov2") == "patchcore·dinov2_vitb14-cpd-k=16"
    with pytest.raises(ReportError, match="names several variant"):
        report.baseline_label(runs, "patchcore.")
    with pytest.raises(ReportError, match="names no variant"):
        report.baseline_label(runs, "patchcore.default")


def test_the_sweeps_closing_table_fits_100_columns():
    """24 jobs: 3 variants (one with a long preset name, one NOT DEPLOYABLE) x 4 domains x 2 seeds with
    intervals: the table printed at the end of a sweep stays within 100 columns, intervals shortened or left
    out before the names, the end of a name kept; the anchors and full cells are in report.md."""
    rows = []
    names = ["feclip · default", "feclip · fft", "patchcore · cpd-2layer-multik-32shot-coldwarm-refs"]
    for variant, domain, seed in itertools.product(names, "ABCD", "01"):
        rows.append({"variant": variant, "domain": domain, "seed": seed, "auroc": 0.9 + 0.01 * int(seed)})
    runs = pd.DataFrame(rows).assign(
        backbone="tiny", random_init=True, run_name="r", auroc_ci_lo=0.85, auroc_ci_hi=0.95, deployable=True
    )
    runs.loc[runs["variant"] == "feclip · fft", "deployable"] = False
    table = report.variant_domain_table(runs, "auroc")
    assert max(map(len, report.markdown_lines(table))) > 100  # the markdown table does not fit
    lines = study_summary(table, Path("multirun/x/report")).splitlines()
    assert max(len(line) for line in lines[:-1]) <= 100, "\n".join(lines)
    assert lines[0].startswith("  image AUROC x100, mean [95 % interval] (24 of 24 runs random-init")
    assert lines[1].split() == ["variant", "A", "B", "C", "D", "mean"]
    body = lines[2:-1]
    assert [line.split()[0] for line in body] == ["feclip", "feclip", "patchcore"] and len(body) == 3
    assert "feclip · fft NOT DEPLOYABLE" in body[1] and "90.5 [" in body[0]
    assert "…" in body[2] and "anchor" not in "".join(body)
    assert lines[-1] == "  intervals in full, notes and 4 published anchor rows: multirun/x/report/report.md"
    narrow = study_summary(table, Path("r"), width=60).splitlines()
    assert max(len(line) for line in narrow[1:-1]) <= 60 and "[" not in "".join(narrow[2:-1])
