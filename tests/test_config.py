"""Every config of every group composes and validates; bad values and typos fail before any work."""

import pytest
from helpers import CONF, compose
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from feclip.config import ConfigError, validate
from feclip.errors import FeclipError

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment"))
# a gate needs reference banks to choose between
NEEDS = {"gating": ["fewshot=k1"]}


def _compose(overrides: list[str]):
    return compose(*overrides, hydra=True)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override",
    [f"{group}={option}" for group in GROUPS for option in _options(group)]
    + [f"experiment={option}" for option in _options("experiment")],
)
def test_every_option_composes_and_validates(override):
    group = override.split("=")[0]
    cfg = _compose([override, *NEEDS.get(group, [])])
    OmegaConf.resolve(cfg)
    if group == "predict" or cfg.mode == "predict":
        cfg.model.checkpoint, cfg.predict.input = "ckpt", "inputs"
    validate(cfg)


@pytest.mark.parametrize("launcher", ["basic", "joblib", "slurm_example"])
def test_launchers_compose(launcher):
    cfg = _compose([f"hydra/launcher={launcher}"])
    assert cfg.hydra.launcher._target_


def test_freq_variants_inherit_the_dct_defaults():
    cfg = _compose(["freq=dct_h5"])
    assert list(cfg.freq.lfs.window) == [1, 5]
    assert list(cfg.freq.ffe.window) == [3, 3] and cfg.freq.transform == "dct"


def test_horizontal_preset_uses_horizontal_windows_and_context():
    cfg = _compose(["experiment=hdmap_horizontal"])
    assert list(cfg.freq.lfs.window) == [1, 5] and list(cfg.freq.ffe.window) == [1, 3]
    assert cfg.fewshot.context == "multi_k" and cfg.fewshot.k > 0


@pytest.mark.parametrize(
    "override, key",
    [
        ("freq.lfs.statistic=median", "freq.lfs.statistic"),
        ("freq.transform=wavelet", "freq.transform"),
        ("model.lam=1.5", "model.lam"),
        ("model.taps=every", "model.taps"),
        ("freq.lfs.window=[0,3]", "freq.lfs.window"),
        ("device=tpu", "device"),
        ("train.batch_size=0", "train.batch_size"),
        ("data.intensity=zscore", "data.intensity"),
        ("model.taps=[0,9]", "model.taps"),
        ("backbone.input_size=[8,192]", "backbone.input_size"),
        ("eval.calibration.percentiles=[99,150]", "eval.calibration.percentiles"),
        ("eval.calibration.operating_point=p95", "eval.calibration.operating_point"),
        ("train.fc_lr_mult=-1", "train.fc_lr_mult"),
        ("data.cold_warm_split=0", "data.cold_warm_split"),
        ("predict.batch_size=0", "predict.batch_size"),
        ("aux.max_normals=-5", "aux.max_normals"),
        ("model.score=cls+max_map model.map=logit_margin", "model.map='logit_margin'"),
        ("eval.split.protocol=random", "eval.split.protocol"),
        ("eval.split.seed=-1", "eval.split.seed"),
        ("eval.split.refs_per_condition=0", "eval.split.refs_per_condition"),
        ("eval.split.dev_fraction=1.0", "eval.split.dev_fraction"),
        ("eval.split.score=[dev,refs]", "eval.split.score"),
        ("eval.split.score=[dev] eval.split.protocol=whole_test", "eval.split.score"),
        ("eval.threshold.source=train", "eval.threshold.source"),
        ("eval.threshold.false_alarm_rates=[0.01,5]", "eval.threshold.false_alarm_rates"),
        ("eval.threshold.per_condition=1", "eval.threshold.per_condition"),
        ("eval.threshold.bootstrap=1", "eval.threshold.bootstrap"),
        ("eval.calibration.operating_point=fa2", "eval.calibration.operating_point"),
        ("eval.split.protocol=whole_test eval.threshold.source=refs", "eval.threshold.source=refs"),
        ("eval.threshold.per_condition=true", "eval.threshold.per_condition=true"),
        ("fewshot=k4 eval.split.refs_per_condition=3", "fewshot.k=4"),
        ("fewshot=k4 eval.split.refs_per_condition=4 eval.threshold.source=refs", "fewshot.k=4"),
    ],
)
def test_invalid_values_name_the_key_and_the_allowed_values(override, key):
    cfg = _compose(override.split())
    with pytest.raises(FeclipError, match=key.replace(".", r"\.")) as error:
        validate(cfg)
    assert "expected" in str(error.value) and "\n" not in str(error.value)


def test_threshold_options_that_need_no_test_labels_validate():
    validate(_compose(["fewshot=k4", "gating=p90", "eval.threshold.per_condition=true"]))
    validate(_compose(["eval.threshold.source=refs", "eval.threshold.per_condition=true"]))
    validate(_compose(["eval.threshold.false_alarm_rates=[0.02]", "eval.calibration.operating_point=fa2"]))


def test_gate_without_banks_is_rejected():
    with pytest.raises(ConfigError, match="fewshot.k"):
        validate(_compose(["gating=p90"]))


def test_typo_in_a_key_or_an_option_fails_at_composition():
    with pytest.raises(ConfigCompositionException, match="lamda"):
        _compose(["model.lamda=0.2"])
    with pytest.raises(ConfigCompositionException, match="fftt"):
        _compose(["freq=fftt"])


@pytest.mark.parametrize("method", ["feclip", "winclip"])
@pytest.mark.parametrize(
    "size, unseen", [("[31,192]", "the last 15 rows"), ("[33,33]", "the last 1 rows and 1 columns")]
)
def test_input_sizes_that_leave_pixels_unseen_are_refused(method, size, unseen):
    """The backbone's stem floors the patch grid: rows or columns past the last whole patch would be
    dropped without a word, so such a size is refused before any work, naming sizes that fit."""
    cfg = _compose([f"method={method}", f"backbone.input_size={size}"])
    with pytest.raises(FeclipError, match=f"backbone.input_size=.*{unseen} would never be seen") as error:
        validate(cfg)
    assert "expected multiples of the patch size, e.g. [32, " in str(error.value)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ("seed=-1", r"seed=-1 is not allowed; expected an integer in \[0, 2\*\*32 - 1\]"),
        ("seed=4294967296", "seed=4294967296 is not allowed"),
        ("train.weight_cls=-5", "train.weight_cls=-5 is not allowed; expected a loss weight >= 0"),
        ("train.weight_mask=-0.5", "train.weight_mask=-0.5 is not allowed"),
        ("train.weight_cls=0 train.weight_mask=0", "leave no loss to train 9 epochs on"),
    ],
)
def test_seeds_numpy_refuses_and_negative_or_no_loss_weights_are_refused(overrides, message):
    """seed=-1 used to end in numpy's traceback; weight_cls=-5 trained silently with a negated loss."""
    with pytest.raises(ConfigError, match=message):
        validate(_compose(overrides.split()))


def test_zero_loss_weights_are_fine_without_training():
    validate(_compose(["train.weight_cls=0", "train.weight_mask=0", "train.epochs=0"]))
