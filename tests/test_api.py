"""feclip.api on a tiny synthetic set: one job run through the API is the job `feclip run` would run (its
name, folder, metrics, tracked run), its runs load from the folders and from the store alike, and the saved
model scores arrays exactly as it scores the same maps from files."""

import math

import numpy as np
import pytest
import tifffile
from helpers import small_data
from omegaconf import OmegaConf

from feclip import api
from feclip.errors import FeclipError
from feclip.evaluation.predictor import PredictError

EXPERIMENT = "api"


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One FE-CLIP job (domain A, FFT adapters) run by `api.run` from overrides, tracked in a sqlite store."""
    tmp = tmp_path_factory.mktemp("api")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    overrides = ["domain=A", "freq=fft", f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}"]
    metrics = api.run([*overrides, *small_data(tmp), "aux.max_normals=40"], tmp / "jobs" / "A-fft")
    return tmp, uri, metrics


def test_compose_is_the_command_line_config(tmp_path):
    assert api.compose("freq=fft").freq.transform == "fft"
    (tmp_path / "freq").mkdir()
    (tmp_path / "freq" / "mine.yaml").write_text("defaults:\n  - dct\n  - _self_\nlfs:\n  window: [1, 5]\n")
    cfg = api.compose(f"hydra.searchpath=[file://{tmp_path}]", "freq=mine")
    assert OmegaConf.to_container(cfg.freq.lfs.window) == [1, 5] and "hydra" not in cfg
    assert "runtime" in api.compose(hydra=True).hydra


@pytest.mark.parametrize(
    "overrides, name",
    [
        ((), "C-feclip·dct"),
        (("freq=fft",), "C-feclip·fft"),
        (("method=patchcore", "freq=fft"), "C-patchcore·tiny"),
    ],
)
def test_a_job_run_from_overrides_is_named_as_feclip_run_names_it(overrides, name):
    """By what its method computes: the default by its content (dct), PatchCore without FE-CLIP's freq."""
    assert api.job_info(api.compose(*overrides, hydra=True)).run_name == name


def test_run_returns_the_metrics_of_its_job_folder(job):
    tmp, _, metrics = job
    assert (tmp / "jobs" / "A-fft" / "checkpoint").is_dir()
    assert 0.0 <= metrics["auroc"] <= 1.0 and 0.0 <= metrics["acc_fa1"] <= 1.0
    assert all(isinstance(value, float) for value in metrics.values())


def test_runs_from_folders_and_from_the_store_are_the_same_run(job):
    tmp, uri, metrics = job
    folders, store = api.runs(tmp / "jobs"), api.runs(uri, experiment=EXPERIMENT)
    assert len(folders) == len(store) == 1 and folders["run_id"][0] == store["run_id"][0]
    row = store.iloc[0]
    assert (row["run_name"], row["variant"], row["domain"]) == ("A-feclip·fft", "feclip·fft", "A")
    assert row["random_init"] and math.isclose(row["auroc"], metrics["auroc"])


def test_runs_refuses_what_it_cannot_read(job, tmp_path):
    tmp, _, _ = job
    with pytest.raises(FeclipError, match="no such folder"):
        api.runs(tmp_path / "missing")
    with pytest.raises(FeclipError, match="a folder has no experiments"):
        api.runs(tmp / "jobs", experiment=EXPERIMENT)


@pytest.fixture(scope="module")
def model(job):
    return api.load_model(job[0] / "jobs" / "A-fft" / "checkpoint", "cpu", batch_size=5)


def test_arrays_score_as_the_same_maps_from_files(job, model):
    files = sorted((job[0] / "hdmap" / "domain_A" / "test" / "fault").glob("*.tiff"))[:7]
    maps = np.stack([tifffile.imread(path) for path in files])  # (7, 31, 95), two batches of 5
    from_files, from_arrays = api.score(model, files), api.score(model, maps)
    assert model.random_init and model.image_shape == (31, 95) == maps.shape[1:]
    assert list(from_files["path"]) == [str(path) for path in files]
    assert list(from_arrays["index"]) == list(range(7)) and (from_arrays["status"] == "ok").all()
    columns = ["score", "map_max", "zscore"]
    np.testing.assert_allclose(from_arrays[columns].to_numpy(), from_files[columns].to_numpy(), rtol=1e-6)
    assert list(from_arrays["decision"]) == list(from_files["decision"])
    assert len(api.score(model, files[0].parent)) == len(list(files[0].parent.glob("*.tiff")))


def test_arrays_that_cannot_be_scored_are_named(model):
    maps = [np.full((31, 95), 0.5, np.float32), np.full((31, 95), np.nan, np.float32), np.ones((40, 100))]
    table = api.score(model, maps, operating_point="fa5")
    assert list(table["status"]) == [
        "ok",
        "error: 2945 non-finite pixel values (NaN/inf); expected finite floats",
        "shape_mismatch 40x100",
    ]
    with pytest.raises(PredictError, match=r"a map of shape \(2, 31, 95\)"):
        api.score(model, [np.zeros((2, 31, 95))])
