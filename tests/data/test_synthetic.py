"""Acceptance tests of the synthetic HDMAP generator (docs/data.md §6), and its writer.

The four domains (1000 train, 500 per test group) are generated once per module with seed 0 and the default
options; `stats.acceptance` turns every section-6 target into a row with its tolerance. Every hard row must
hold (one test per section); the report with the soft rows is printed. One more seed is checked here; the
sweep over seeds 1-5 is `scripts/synthetic_stats.py --seeds 0 1 2 3 4 5` (experiments/007_synthetic_twin).
The real domain-C per-image statistics are the fixture copy of the user's CSV.
"""

import json
import signal
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from feclip.data import stats, synthetic
from feclip.data.hdmap import DOMAINS
from feclip.errors import Terminated

REAL_C = Path(__file__).parent / "fixtures" / "hdmap_domain_C_image_stats.csv"
N_TRAIN, N_TEST, SEED, OTHER_SEED = 1000, 1000, 0, 2
SECTIONS = ("6.1 format", "6.2 C per-image", "6.3 pooled", "6.4 gating", "6.5 separability", "6.6 structure")


def _acceptance(generated: dict[str, synthetic.SyntheticDomain]) -> pd.DataFrame:
    domains = {d: (g.images, g.meta) for d, g in generated.items()}
    return stats.acceptance(domains, pd.read_csv(REAL_C))


@pytest.fixture(scope="module")
def generated() -> dict[str, synthetic.SyntheticDomain]:
    return {d: synthetic.generate_domain(d, N_TRAIN, N_TEST, SEED) for d in DOMAINS}


@pytest.fixture(scope="module")
def acceptance(generated) -> pd.DataFrame:
    return _acceptance(generated)


def _failing(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["hard"] & ~table["ok"]]


# ---------------------------------------------------------------- section 6 on the default seed


@pytest.mark.parametrize("section", SECTIONS)
def test_every_hard_target_of_the_section_holds(acceptance, section):
    rows = acceptance[acceptance["section"] == section]
    assert rows["hard"].all() and len(rows) > 0
    assert _failing(rows).empty, _failing(rows).to_string()


def test_report_shows_the_key_rows_and_the_soft_rows(acceptance, capsys):
    report = stats.acceptance_report(acceptance)
    with capsys.disabled():
        print(f"\n\nsynthetic HDMAP, seed {SEED}, acceptance (docs/data.md §6):\n\n{report}\n")
    soft = acceptance[~acceptance["hard"]]
    assert len(soft) == 4 * 7 and set(soft["section"]) == {"6.6 spectra (soft)"}
    for domain, check in stats.KEY_ROWS:
        matches = acceptance[(acceptance["domain"] == domain) & acceptance["check"].str.startswith(check)]
        assert len(matches) == 1 and matches["check"].iloc[0] in report


def test_another_seed_meets_every_hard_target():
    other = {d: synthetic.generate_domain(d, N_TRAIN, N_TEST, OTHER_SEED) for d in DOMAINS}
    failing = _failing(_acceptance(other))
    assert failing.empty, failing.to_string()


def test_a_structureless_generator_with_the_right_moments_fails_the_structure_checks(generated, acceptance):
    """The strawman: every image's own pixels in random order. Per-image and pooled statistics, gates and
    AUROCs are those of the real generator; only the structure checks of 6.6 can tell it from HDMAP."""
    rng = np.random.default_rng(0)

    def structureless(data: synthetic.SyntheticDomain) -> synthetic.SyntheticDomain:
        pixels = rng.permuted(data.images.reshape(len(data.images), -1), axis=1)
        return synthetic.SyntheticDomain(pixels.reshape(data.images.shape), data.masks, data.meta)

    strawman = _acceptance({d: structureless(g) for d, g in generated.items()})
    moments = strawman["section"].isin(SECTIONS[:-1])
    assert strawman.loc[moments, "ok"].all()
    np.testing.assert_allclose(strawman.loc[moments, "synth"], acceptance.loc[moments, "synth"], rtol=1e-9)
    failed = _failing(strawman)
    assert set(failed["section"]) == {"6.6 structure"}
    for domain in DOMAINS:
        checks = set(failed.loc[failed["domain"] == domain, "check"])
        assert {"APE normal", "SFM normal"} <= checks  # white-noise spectra: APE ~0.9, SFM ~0.56
        assert any(check.startswith("warm faults: brightest row") for check in checks)  # no band row
    white = strawman[strawman["check"] == "APE normal"]["synth"]
    assert (white > 0.88).all()


# ---------------------------------------------------------------- format, masks, options


def test_format_counts_and_values(generated):
    for data in generated.values():
        counts = data.meta.groupby(["split", "label"]).size().to_dict()
        assert counts == {("train", 0): N_TRAIN, ("test", 0): N_TEST, ("test", 1): N_TEST}
        train = (data.meta["split"] == "train").to_numpy()
        conditions = data.meta.loc[~train].groupby("condition")["file_index"].agg(["min", "max"])
        assert conditions.loc["cold"].tolist() == [0, 499] and conditions.loc["warm"].tolist() == [500, 999]


def test_masks_mark_every_fault_on_its_row_and_no_good_image(generated):
    for domain, data in generated.items():
        fault = (data.meta["label"] == 1).to_numpy()
        assert set(np.unique(data.masks)) <= {0, 1} and data.masks[~fault].sum() == 0
        rows = data.meta.loc[fault, "fault_row"].to_numpy()
        assert (rows == synthetic.PARAMS[domain].fault_row).all()
        assert data.masks[fault, rows].sum(axis=1).min() > 0  # every fault has masked pixels on its row


def test_change_mask_adds_the_whole_image_change_to_the_band_mask():
    band = synthetic.generate_domain("C", 0, 40, SEED)
    change = synthetic.generate_domain("C", 0, 40, SEED, mask="change")
    np.testing.assert_array_equal(band.images, change.images)  # the option changes masks only
    fault = (band.meta["label"] == 1).to_numpy()
    assert change.masks[~fault].sum() == 0 and (change.masks >= band.masks).all()
    assert change.masks[fault].mean() > 5 * band.masks[fault].mean()  # gain and texture move most pixels
    off_band = (change.masks == 1) & (band.masks == 0)
    assert off_band[fault].any(axis=(1, 2)).all()


def test_isolated_pixels_lower_the_min_and_widen_the_max():
    def extremes(**options):  # per-image min and max of the cold normals, and the sidecar
        data = synthetic.generate_domain("C", 0, 400, SEED, **options)
        cold_goods = ((data.meta["label"] == 0) & (data.meta["condition"] == "cold")).to_numpy()
        flat = data.images[cold_goods].reshape(cold_goods.sum(), -1)
        return flat.min(axis=1), flat.max(axis=1), data.meta

    low, high, meta = extremes()
    plain_low, plain_high, plain_meta = extremes(isolated_pixels=False)
    assert (meta["n_dark"] >= 1).all() and (plain_meta[["n_bright", "n_dark"]] == 0).all().all()
    assert np.median(low) < np.median(plain_low) and high.std() > plain_high.std()


def test_fixed_structure_keeps_its_spectrum_across_seeds():
    """COL, ROW, LAT are random-phase fields: another seed changes phases, not amplitude spectra (APE, SFM
    and the band shares of 6.6 then do not hinge on one lucky fingerprint)."""
    params = synthetic.PARAMS["A"]
    first, second = (synthetic._structure(params, np.random.default_rng(seed)) for seed in (1, 2))
    assert not np.allclose(first, second)
    for component, axis in ((0, 1), (1, 0)):  # COL varies along x, ROW along y
        spectra = [np.abs(np.fft.rfft(field[component, 0].mean(axis=1 - axis))) for field in (first, second)]
        np.testing.assert_allclose(spectra[0], spectra[1], rtol=1e-9, atol=1e-9)


def test_random_fault_rows_vary():
    data = synthetic.generate_domain("B", 0, 40, SEED, fault_row="random")
    rows = data.meta.loc[data.meta["label"] == 1, "fault_row"]
    assert rows.nunique() > 5 and rows.between(0, 30).all()


def test_per_file_streams_do_not_depend_on_counts(generated):
    small = synthetic.generate_domain("C", n_train=20, n_test=20, seed=SEED)
    full = generated["C"]
    np.testing.assert_array_equal(small.images[:20], full.images[:20])  # train 0..19
    np.testing.assert_array_equal(small.images[20:30], full.images[N_TRAIN : N_TRAIN + 10])  # cold goods 0..9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tail_cap": True}, "unknown generator option"),
        ({"fault_row": "middle"}, "fault_row"),
        ({"mask": "all"}, "mask"),
        ({"isolated_pixels": "yes"}, "isolated_pixels"),
    ],
)
def test_options_are_validated(kwargs, match):
    with pytest.raises(synthetic.SyntheticError, match=match):
        synthetic.generate_domain("C", 2, 2, **kwargs)


def test_inputs_are_validated():
    with pytest.raises(synthetic.SyntheticError, match="domain"):
        synthetic.generate_domain("E", 2, 2)
    with pytest.raises(synthetic.SyntheticError, match="n_test"):
        synthetic.generate_domain("C", 2, -1)


def test_tail_caps_bound_test_maxima():
    data = synthetic.generate_domain("D", 0, 200, seed=1)
    maxima = data.images.reshape(len(data.images), -1).max(axis=1)
    fault = (data.meta["label"] == 1).to_numpy()
    assert maxima[~fault].max() <= synthetic.PARAMS["D"].cap_good
    assert maxima[fault].max() <= synthetic.PARAMS["D"].cap_fault


# ---------------------------------------------------------------- the writer and `ensure`


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.tiff"))}


def test_generate_writes_the_real_tree_masks_and_sidecar(tmp_path):
    meta = synthetic.generate(tmp_path, domains=("C",), n_train=3, n_test=4, seed=SEED)
    domain = tmp_path / "domain_C"
    for folder, n in (("train/good", 3), ("test/good", 4), ("test/fault", 4), ("ground_truth/fault", 4)):
        assert sorted(p.name for p in (domain / folder).iterdir()) == [f"{i:06d}.tiff" for i in range(n)]
    image = tifffile.imread(domain / "test/fault/000003.tiff")
    mask = tifffile.imread(domain / "ground_truth/fault/000003.tiff")
    assert image.dtype == np.float32 and image.shape == (31, 95)
    assert mask.dtype == np.uint8 and mask.shape == (31, 95) and set(np.unique(mask)) == {0, 1}
    sidecar = pd.read_csv(tmp_path / synthetic.SIDECAR)
    assert list(sidecar.columns) == list(synthetic.SIDECAR_COLUMNS) and len(sidecar) == len(meta) == 11
    fault = sidecar[sidecar["label"] == 1].set_index("file_index")
    assert fault["condition"].tolist() == ["cold", "cold", "warm", "warm"] and (fault["fault_row"] == 5).all()
    expected = synthetic.generate_domain("C", 3, 4, seed=SEED)
    np.testing.assert_array_equal(image, expected.images[-1])
    np.testing.assert_array_equal(mask, expected.masks[-1])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        synthetic.generate(runs[name], domains=("A",), n_train=2, n_test=2, seed=seed)
    assert _files(runs["a"]) == _files(runs["b"])
    assert (runs["a"] / synthetic.SIDECAR).read_bytes() == (runs["b"] / synthetic.SIDECAR).read_bytes()
    first, other = _files(runs["a"]), _files(runs["c"])
    images = [name for name in first if "ground_truth" not in name]
    assert len(images) == 6 and all(first[name] != other[name] for name in images)


def test_ensure_generates_absent_or_incomplete_sets_and_is_a_no_op_when_complete(tmp_path, monkeypatch):
    out = synthetic.ensure(tmp_path / "set", domains=("B",), n_train=2, n_test=2, seed=SEED)
    marker = json.loads((out / synthetic.MARKER).read_text())
    assert marker["version"] == synthetic.VERSION and marker["n_test"] == 2 and marker["domains"] == ["B"]
    assert marker["options"] == {
        "tail_caps": True,
        "isolated_pixels": True,
        "fault_row": "fixed",
        "mask": "band",
    }
    calls = []
    original = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda *a, **k: calls.append(a) or original(*a, **k))
    synthetic.ensure(out, domains=("B",), n_train=2, n_test=2, seed=SEED)
    assert calls == []
    (out / "domain_B/test/good/000001.tiff").unlink()  # incomplete set, same parameters -> regenerated
    synthetic.ensure(out, domains=("B",), n_train=2, n_test=2, seed=SEED)
    assert len(calls) == 1 and (out / "domain_B/test/good/000001.tiff").exists()


def test_an_interrupted_generation_is_recognised_and_redone(tmp_path, monkeypatch, capsys):
    """Ctrl-C while the TIFFs were written left 403 files and no marker, and the next run refused the
    folder: now `.generating.json` marks it, and the next run generates it again, identical to a fresh one."""
    out, real, written = tmp_path / "set", tifffile.imwrite, []

    def interrupted(path, data, **options):
        if len(written) == 5:
            raise Terminated(signal.SIGINT)
        written.append(path)
        real(path, data, **options)

    monkeypatch.setattr(tifffile, "imwrite", interrupted)
    with pytest.raises(Terminated):
        synthetic.ensure(out, domains=("B",), n_train=4, n_test=4, seed=SEED)
    assert (out / synthetic.PARTIAL).exists() and not (out / synthetic.MARKER).exists()
    assert len(list(out.rglob("*.tiff"))) == 5
    monkeypatch.setattr(tifffile, "imwrite", real)
    synthetic.ensure(out, domains=("B",), n_train=4, n_test=4, seed=SEED)
    assert capsys.readouterr().err.count(f"feclip: note: {out}: holds an interrupted generation") == 1
    assert (out / synthetic.MARKER).exists() and not (out / synthetic.PARTIAL).exists()
    fresh = synthetic.ensure(tmp_path / "fresh", domains=("B",), n_train=4, n_test=4, seed=SEED)
    files = sorted(p.relative_to(out) for p in out.rglob("*.tiff"))
    assert files == sorted(p.relative_to(fresh) for p in fresh.rglob("*.tiff")) and len(files) == 16
    assert all(np.array_equal(tifffile.imread(out / f), tifffile.imread(fresh / f)) for f in files)


@pytest.mark.parametrize(
    "request_, match",
    [
        ({"n_test": 4}, r"n_test: 2 -> 4"),
        ({"seed": 1}, r"seed: 0 -> 1"),
        ({"mask": "change"}, r"options\.mask: 'band' -> 'change'"),
    ],
)
def test_ensure_refuses_a_folder_generated_with_other_parameters(tmp_path, request_, match):
    out = synthetic.ensure(tmp_path, domains=("B",), n_train=2, n_test=2, seed=SEED)
    before = _files(out)
    with pytest.raises(synthetic.SyntheticError, match=match) as error:
        synthetic.ensure(out, **{"domains": ("B",), "n_train": 2, "n_test": 2, "seed": SEED, **request_})
    message = str(error.value)
    assert "\n" not in message and str(out) in message and "data.root" in message and "delete" in message
    assert _files(out) == before  # nothing regenerated in place


def test_ensure_refuses_a_set_of_an_older_generator_version(tmp_path):
    out = synthetic.ensure(tmp_path, domains=("C",), n_train=1, n_test=2, seed=SEED)
    marker = json.loads((out / synthetic.MARKER).read_text())
    (out / synthetic.MARKER).write_text(json.dumps({**marker, "version": synthetic.VERSION - 1}))
    with pytest.raises(
        synthetic.SyntheticError, match=f"version: {synthetic.VERSION - 1} -> {synthetic.VERSION}"
    ):
        synthetic.ensure(out, domains=("C",), n_train=1, n_test=2, seed=SEED)


def test_generate_refuses_to_overwrite_a_folder_without_marker(tmp_path):
    (tmp_path / "domain_A" / "train" / "good").mkdir(parents=True)
    with pytest.raises(synthetic.SyntheticError, match="refusing"):
        synthetic.ensure(tmp_path, domains=("A",), n_train=1, n_test=2)
