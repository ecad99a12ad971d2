"""One job's promises before and around the work: output locations checked first, nothing to train on
refused before the model is built, a full disk said in one line with no partial checkpoint."""

import errno
import json
from pathlib import Path

import pytest
from helpers import compose, full_disk, immutable

from feclip import cli
from feclip.data.hdmap import HDMAPError
from feclip.data.sources import SourceError
from feclip.files import OutputError
from feclip.jobs import train_eval
from feclip.jobs.run import main
from feclip.tracking import JobInfo


def _job(root: Path, tmp: Path, *overrides: str):
    return compose(
        f"data.root={root}",
        "data.synthetic.n_train=20",
        "data.synthetic.n_test=20",
        "eval.split.refs_per_condition=5",
        "train.epochs=1",
        f"cache_dir={tmp / 'cache'}",
        "tracking.enabled=false",
        "eval.figures=false",
        *overrides,
    )


def _predict(tmp: Path, *overrides: str):
    return compose("mode=predict", f"model.checkpoint={tmp / 'none'}", f"predict.input={tmp}", *overrides)


@pytest.mark.parametrize("key", ["cache_dir", "predict.out"])
def test_an_output_location_that_is_a_file_is_refused_before_the_work(tmp_path, small_root, key):
    """cache_dir=<a file> ended in a traceback; predict.out=<a file> only after every file was scored."""
    (tmp_path / "taken").write_text("a file")
    cfg = _job(small_root, tmp_path, f"{key}={tmp_path / 'taken'}")
    cfg = _predict(tmp_path, f"predict.out={tmp_path / 'taken'}") if key == "predict.out" else cfg
    with pytest.raises(OutputError, match=f"{key}='{tmp_path / 'taken'}' is a file; expected a folder"):
        main(cfg, tmp_path / "job", JobInfo("j", "j"))
    assert not (tmp_path / "job" / "run.json").exists()  # refused before the job started


def test_an_unwritable_predict_out_is_refused_before_scoring(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with immutable(out):
        with pytest.raises(OutputError, match=r"predict.out=.*cannot hold files \(\[Errno 1\]"):
            main(_predict(tmp_path, f"predict.out={out}"), tmp_path / "job", JobInfo("p", "p"))
    assert not (tmp_path / "job" / "run.json").exists()


@pytest.mark.parametrize(
    "override, error",
    [("data.val_fraction=0.99", HDMAPError), ("aux.faults_per_normal=0.0001", SourceError)],
)
def test_nothing_to_train_on_is_refused_before_the_model_is_built(
    tmp_path, small_root, monkeypatch, override, error
):
    def build_method(cfg):
        raise AssertionError("the model was built before the training set was checked")

    monkeypatch.setattr(train_eval, "build_method", build_method)
    with pytest.raises(error) as caught:
        main(_job(small_root, tmp_path, override), tmp_path / "job", JobInfo("j", "j"))
    assert cli.exit_code(caught.value)[0] == cli.EXIT_INPUT
    assert json.loads((tmp_path / "job" / "run.json").read_text())["status"] == "FAILED"


def test_a_full_disk_under_the_job_folder_is_one_line_and_leaves_no_partial_checkpoint(tmp_path, small_root):
    """The checkpoint (7 MB with the random-init backbone) does not fit a 2 MB disk: SafetensorError used to
    escape with a partial checkpoint and no manifest."""
    with full_disk(tmp_path / "disk") as disk:
        with pytest.raises(OSError) as caught:
            main(_job(small_root, tmp_path), disk / "job", JobInfo("j", "j"))
        assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(
            disk / "job" / "checkpoint"
        )
        code, message = cli.exit_code(caught.value)
        assert code == cli.EXIT_SYSTEM and message == (
            f"error: {disk / 'job' / 'checkpoint'}: disk full ([Errno 28] No space left on device)"
        )
        assert sorted(p.name for p in (disk / "job").iterdir()) == [
            "config.yaml",
            "history.csv",
            "metrics.json",
            "run.json",
            "scores.csv",
            "scores_info.json",
        ]  # no checkpoint, no temporary
        assert json.loads((disk / "job" / "run.json").read_text())["status"] == "FAILED"
