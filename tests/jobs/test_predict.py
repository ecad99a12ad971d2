"""Apply a trained model in the field: calibration stored with the checkpoint, predict on a TIFF folder."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from helpers import compose, small_data
from mlflow import MlflowClient

from feclip.evaluation import calibration
from feclip.evaluation.predictor import (
    PredictError,
    list_inputs,
    load_predictor,
    overlay_writer,
    predict_files,
)
from feclip.jobs.predict import NothingScoredError
from feclip.jobs.run import main
from feclip.model.backbone import ClipBackbone
from feclip.model.checkpoint import CheckpointError
from feclip.runtime import Runtime
from feclip.tracking import JobInfo


def _cfg(overrides: list[str]):
    return compose(*overrides)


def _train(tmp: Path, name: str, overrides: list[str]) -> Path:
    """One train_eval job into `tmp/train` (the checkpoint the tests predict with); returns tmp."""
    main(_cfg(overrides), tmp / "train", JobInfo(name, name))
    return tmp


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """1 epoch on synthetic domain C (1000 train normals: 100 held out for calibration), 500 + 500 test."""
    tmp = tmp_path_factory.mktemp("predict")
    return _train(
        tmp,
        "train",
        [
            "domain=C",
            f"data.root={tmp / 'hdmap'}",
            "data.synthetic.n_train=1000",
            "data.synthetic.n_test=500",
            "train.epochs=1",
            "aux.max_normals=200",
            "tracking.enabled=false",
            f"cache_dir={tmp / 'cache'}",
            "eval.figures=false",
            "eval.calibration.operating_point=p99",
        ],
    )


@pytest.fixture(scope="module")
def field(trained):
    """The synthetic test folder copied elsewhere under new names, plus a corrupt file and a resized map."""
    field = trained / "field"
    field.mkdir()
    for label in ("good", "fault"):
        for path in sorted((trained / "hdmap" / "domain_C" / "test" / label).glob("*.tiff")):
            shutil.copy(path, field / f"{label}_{path.name}")
    (field / "zz_corrupt.tiff").write_bytes(b"not a tiff at all")
    tifffile.imwrite(field / "zz_other_shape.tiff", np.full((40, 100), 0.3, dtype=np.float32))
    return field


@pytest.fixture(scope="module")
def predicted(trained, field):
    cfg = _cfg(
        [
            "mode=predict",
            f"model.checkpoint={trained / 'train' / 'checkpoint'}",
            f"predict.input={field}",
            "tracking.enabled=false",
            "predict.overlays=true",
            "predict.batch_size=100",
        ]
    )
    main(cfg, trained / "predict", JobInfo("predict", "predict"))
    return pd.read_csv(trained / "predict" / "predictions.csv"), trained / "predict"


def test_decisions_match_the_calibration_record(trained, predicted):
    table, _ = predicted
    record = json.loads((trained / "train" / "checkpoint" / "predictor.json").read_text())["calibration"]
    assert record["operating_point"] == "p99" and record["n_normals"] == 100
    assert len(record["data_hash"]) == 16 and record["input"]["size"] == [64, 192]
    scored = table[~table["status"].str.startswith("error")]
    expected = np.where(calibration.decide(scored["score"].to_numpy(), record), "fault", "normal")
    assert (scored["decision"].to_numpy() == expected).all()
    z = calibration.zscore(scored["score"].to_numpy(), record)
    np.testing.assert_allclose(scored["zscore"].to_numpy(), z, rtol=1e-6, atol=1e-6)


def test_false_alarm_rate_on_test_normals_is_near_the_promise(predicted):
    table, _ = predicted
    normals = table[table["path"].str.contains("/good_")]
    assert len(normals) == 500
    false_alarms = (normals["decision"] == "fault").mean()
    print(f"false-alarm rate at p99 on {len(normals)} synthetic test normals: {false_alarms:.4f}")
    assert false_alarms <= 0.02


def test_bad_files_are_reported_not_fatal(predicted):
    table, out = predicted
    assert len(table) == 1002
    corrupt = table[table["path"].str.endswith("zz_corrupt.tiff")].iloc[0]
    assert corrupt["status"].startswith("error") and pd.isna(corrupt["score"])
    assert (
        table[table["path"].str.endswith("zz_other_shape.tiff")]["status"].iloc[0] == "shape_mismatch 40x100"
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_errors"] == 1 and summary["first_errors"][0].endswith("zz_corrupt.tiff")
    flagged = (table["decision"] == "fault").sum()
    assert summary["n_flagged"] == flagged and len(list((out / "overlays").glob("*.png"))) == flagged


def test_checkpoint_rebuilds_the_model_without_the_config(trained):
    """The loaded predictor reproduces the training run's own test scores (scores.csv)."""
    predictor = load_predictor(trained / "train" / "checkpoint", torch.device("cpu"))
    scores = pd.read_csv(trained / "train" / "scores.csv").head(8)
    images = torch.from_numpy(np.stack([tifffile.imread(p) for p in scores["path"]]))
    with torch.inference_mode():
        out = predictor.method.forward(predictor.to_input(images))
    np.testing.assert_allclose(out.score.numpy(), scores["score"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_empty_folder_and_missing_checkpoint_are_one_line_errors(tmp_path):
    with pytest.raises(PredictError, match="no TIFF files"):
        list_inputs(str(tmp_path))
    with pytest.raises(PredictError, match="predictor.json"):
        load_predictor(tmp_path, torch.device("cpu"))


def test_a_fitted_gate_labels_new_files_but_the_oracle_is_refused(trained, field, tmp_path):
    for state in ({"name": "p90", "threshold": 0.3, "temperature": 0.01}, {"name": "oracle"}):
        checkpoint = shutil.copytree(trained / "train" / "checkpoint", tmp_path / state["name"])
        (checkpoint / "manifest.json").unlink()  # a hand-made model: nothing to verify it against
        spec = json.loads((checkpoint / "predictor.json").read_text())
        (checkpoint / "predictor.json").write_text(json.dumps({**spec, "gate": state}))
        if state["name"] == "oracle":
            with pytest.raises(PredictError, match="gate 'oracle' needs labels"):
                load_predictor(checkpoint, torch.device("cpu"))
            continue
        predictor = load_predictor(checkpoint, torch.device("cpu"))
        files = sorted(field.glob("good_*.tiff"))[:4] + sorted(field.glob("good_*.tiff"))[-4:]
        table = predict_files(
            predictor, files, Runtime(torch.device("cpu"), batch_size=8), operating_point="p99"
        )
        # synthetic C: the 4 coldest normals read cold, the 4 warmest warm (p90 midpoint ~0.31)
        assert table["gate"].tolist() == ["cold"] * 4 + ["warm"] * 4


def _copy(trained, tmp_path, name):
    return shutil.copytree(trained / "train" / "checkpoint", tmp_path / name)


def test_an_edited_threshold_or_weight_is_refused(trained, tmp_path):
    checkpoint = _copy(trained, tmp_path, "edited")
    content = json.loads((checkpoint / "predictor.json").read_text())
    content["calibration"]["score"]["p99"] = 0.0
    (checkpoint / "predictor.json").write_text(json.dumps(content))
    with pytest.raises(PredictError, match=r"predictor\.json was changed after the run saved it"):
        load_predictor(checkpoint, torch.device("cpu"))
    checkpoint = _copy(trained, tmp_path, "weights")
    (checkpoint / "trainable.safetensors").write_bytes(
        (checkpoint / "trainable.safetensors").read_bytes()[:-8]
    )
    with pytest.raises(PredictError, match=r"trainable\.safetensors was changed"):
        load_predictor(checkpoint, torch.device("cpu"))


def test_a_non_finite_score_is_an_error_never_normal(trained, tmp_path):
    image = np.full((31, 95), 0.3, dtype=np.float32)
    image[5, 5] = 1e30
    tifffile.imwrite(tmp_path / "huge.tiff", image)
    predictor = load_predictor(trained / "train" / "checkpoint", torch.device("cpu"))
    table = predict_files(
        predictor, [tmp_path / "huge.tiff"], Runtime(torch.device("cpu")), operating_point="p99"
    )
    assert not np.isfinite(table["score"].iloc[0])  # the premise: this input breaks the tiny model's score
    assert table["status"].iloc[0] == "error: non-finite score" and "decision" not in table


def test_a_folder_of_only_unreadable_files_writes_the_summary_and_fails(trained, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.tiff", "b.TIFF"):
        (folder / name).write_bytes(b"not a tiff")
    cfg = _cfg(
        ["mode=predict", f"model.checkpoint={trained / 'train' / 'checkpoint'}", f"predict.input={folder}"]
    )
    cfg.tracking.enabled = False
    with pytest.raises(NothingScoredError, match="none of the 2 files"):
        main(cfg, tmp_path / "out", JobInfo("p", "p"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["n_files"] == 2 and summary["n_scored"] == 0 and summary["n_errors"] == 2


def test_overlay_names_are_unique(tmp_path):
    files = [tmp_path / "dup.tif", tmp_path / "dup.tiff", tmp_path / "other" / "dup.tif"]
    write = overlay_writer(tmp_path / "overlays", files)
    for path in files:
        write(path, np.zeros((31, 95)), np.zeros((31, 95)))
    assert sorted(p.name for p in (tmp_path / "overlays").glob("*.png")) == [
        "dup.tif.1.png",
        "dup.tif.png",
        "dup.tiff.png",
    ]


def test_upper_case_tiff_files_are_listed(tmp_path):
    for name in ("a.TIFF", "b.tif", "c.Tiff", "d.png"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_inputs(str(tmp_path))] == ["a.TIFF", "b.tif", "c.Tiff"]


def test_skipped_entries_are_named_and_a_dangling_link_is_listed_with_its_reason(tmp_path, capsys):
    """Nothing at predict.input is dropped silently: other entries are named in one note, and a dangling
    .tiff link stays listed (its row says why it was not scored)."""
    (tmp_path / "a.tiff").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "b.tiff").symlink_to(tmp_path / "gone.tiff")
    assert [p.name for p in list_inputs(str(tmp_path))] == ["a.tiff", "b.tiff"]
    assert capsys.readouterr().err == (
        f"feclip: note: {tmp_path}: skipped 2 entries that are not .tif/.tiff files: notes.txt, sub/\n"
    )


@pytest.fixture(scope="module")
def fewshot_run(tmp_path_factory):
    """A gated few-shot run (1 + 1 references, p90 gate), tracked in sqlite."""
    tmp = tmp_path_factory.mktemp("fewshot")
    return _train(
        tmp,
        "fewshot",
        [
            "domain=C",
            *small_data(tmp, n=40),
            "fewshot=k1",
            "gating=p90",
            f"tracking.uri=sqlite:///{tmp / 'mlflow.db'}",
            "tracking.experiment=fewshot",
            "eval.figures=false",
        ],
    )


def test_a_few_shot_model_predicts_its_own_test_folder_exactly(fewshot_run):
    scores = pd.read_csv(fewshot_run / "train" / "scores.csv")
    predictor = load_predictor(fewshot_run / "train" / "checkpoint", torch.device("cpu"))
    assert predictor.scorer is not None and predictor.gate.name == "p90"
    files = [Path(p) for p in scores["path"]]
    table = predict_files(
        predictor, files, Runtime(torch.device("cpu"), batch_size=16), operating_point="p99"
    )
    np.testing.assert_allclose(table["score"], scores["score"], rtol=1e-5, atol=1e-6)
    assert table["gate"].tolist() == scores["gate"].tolist()


@pytest.mark.cuda
@pytest.mark.parametrize("method", ["feclip", "patchcore", "winclip"])
def test_a_gated_few_shot_model_predicts_on_cuda_as_on_the_cpu(method, tmp_path):
    """Trained on the CPU, applied on CUDA (banks and gate moved with the model): the CPU's scores."""
    overrides = ["domain=C", *small_data(tmp_path, n=40), f"method={method}", "fewshot=k1", "gating=p90"]
    run = _train(tmp_path, method, [*overrides, "tracking.enabled=false", "eval.figures=false"])
    scores = pd.read_csv(run / "train" / "scores.csv")
    predictor = load_predictor(run / "train" / "checkpoint", torch.device("cuda"))
    files = [Path(p) for p in scores["path"]]
    rt = Runtime(torch.device("cuda"), batch_size=16)
    table = predict_files(predictor, files, rt, operating_point="p99")
    np.testing.assert_allclose(table["score"], scores["score"], rtol=1e-4, atol=1e-5)
    assert table["gate"].tolist() == scores["gate"].tolist()


def test_runs_uri_checkpoints_load_for_predict(fewshot_run, tmp_path):
    client = MlflowClient(f"sqlite:///{fewshot_run / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("fewshot").experiment_id])
    folder = fewshot_run / "hdmap" / "domain_C" / "test" / "good"
    cfg = _cfg(
        [
            "mode=predict",
            f"model.checkpoint=runs:/{run.info.run_id}/checkpoint",
            f"predict.input={folder}",
            f"tracking.uri=sqlite:///{fewshot_run / 'mlflow.db'}",
            "tracking.experiment=fewshot_predict",
        ]
    )
    assert main(cfg, tmp_path / "out", JobInfo("p", "p")) is not None
    assert len(pd.read_csv(tmp_path / "out" / "predictions.csv")) == 40
    assert (tmp_path / "out" / "input_model" / "checkpoint" / "manifest.json").is_file()


@pytest.fixture(scope="module")
def portable_run(tmp_path_factory):
    """FE-CLIP on domain A with the backbone's weights from a local file (a saved tiny state dict)."""
    tmp = tmp_path_factory.mktemp("portable")
    torch.manual_seed(3)
    weights = tmp / "weights" / "tiny.bin"
    weights.parent.mkdir()
    torch.save(ClipBackbone("feclip-tiny").clip.state_dict(), weights)
    overrides = ["domain=A", *small_data(tmp, n=40), f"backbone.pretrained={weights}", "eval.figures=false"]
    return _train(tmp, "portable", [*overrides, "tracking.enabled=false"])


def _predict(run: Path, out: Path, *overrides: str) -> dict:
    """Predict run's own domain-A test/good folder; returns the predict job's run.json."""
    folder = run / "hdmap" / "domain_A" / "test" / "good"
    cfg = _cfg(
        [
            "mode=predict",
            f"model.checkpoint={run / 'train' / 'checkpoint'}",
            f"predict.input={folder}",
            "tracking.enabled=false",
            *overrides,
        ]
    )
    main(cfg, out, JobInfo("C-checkpoint=x", "checkpoint=x"))
    return json.loads((out / "run.json").read_text())


def test_a_predict_run_is_labelled_from_the_checkpoint_not_the_default_config(portable_run, tmp_path):
    record = _predict(portable_run, tmp_path / "out")
    tags = record["tags"]
    assert record["run_name"] == "A-predict-feclip"
    assert (tags["domain"], tags["method"], tags["backbone"]) == ("A", "feclip", "feclip-tiny")
    assert tags["feclip.random_init"] == "false" and tags["precision"] == "fp32"


def test_a_moved_weights_file_is_found_by_override_and_checked(portable_run, tmp_path):
    expected = pd.read_csv(portable_run / "train" / "scores.csv")
    moved = tmp_path / "moved.bin"
    shutil.move(portable_run / "weights" / "tiny.bin", moved)
    try:
        with pytest.raises(PredictError, match=r"tiny.bin .* is gone; .*predict.backbone_weights="):
            _predict(portable_run, tmp_path / "refused")
        _predict(portable_run, tmp_path / "out", f"predict.backbone_weights={moved}")
        other = tmp_path / "other.bin"
        torch.manual_seed(4)
        torch.save(ClipBackbone("feclip-tiny").clip.state_dict(), other)
        with pytest.raises(CheckpointError, match="backbone weights"):
            _predict(portable_run, tmp_path / "other", f"predict.backbone_weights={other}")
    finally:
        shutil.move(moved, portable_run / "weights" / "tiny.bin")
    scores = pd.read_csv(tmp_path / "out" / "predictions.csv").set_index("path")["score"]
    good = expected[expected["label"] == 0].set_index("path")["score"]
    np.testing.assert_allclose(scores.loc[good.index], good, rtol=1e-5, atol=1e-6)


def test_predict_applies_the_calibrated_precision_or_refuses_another(portable_run, tmp_path):
    with pytest.raises(PredictError, match="calibrated at fp32"):
        _predict(portable_run, tmp_path / "refused", "precision=bf16")
    saved = json.loads((portable_run / "train" / "checkpoint" / "predictor.json").read_text())
    assert saved["identity"]["precision"] == "fp32"
    tags = _predict(portable_run, tmp_path / "out", "precision=bf16", "predict.allow_precision_change=true")[
        "tags"
    ]
    assert tags["precision"] == "bf16" and tags["predict.calibrated_precision"] == "fp32"
