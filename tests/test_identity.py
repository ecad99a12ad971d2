"""What a run's results depend on (`feclip.identity`, each method's `reads`): the declared lists are checked
against the code by running each method with everything it does not read changed, so they cannot go stale."""

from pathlib import Path

import pandas as pd
import pytest
from helpers import CONF, compose, small_data
from omegaconf import OmegaConf

from feclip.identity import EVERYTHING, SHARED, Reads, identity_hash, leaves, relevant, variant_label
from feclip.jobs.common import config_hash, job_params
from feclip.jobs.run import main
from feclip.methods.registry import METHODS, job_reads
from feclip.runtime import compute_identity
from feclip.tracking import JobInfo
from feclip.tracking.local import METRICS_FILE, read_json

PATCHCORE = Reads(("method",), headline=("method.backbone",))
NOT_PERTURBED = (
    "hydra",
    "experiment",
    "search",
    "tracking",
    "predict",
    "domain",
)  # where a job runs, named elsewhere


def test_reads_cover_the_shared_keys_and_their_own_only():
    assert PATCHCORE.covers("method.coreset_ratio") and PATCHCORE.covers("fewshot.k")
    assert PATCHCORE.covers("device") and PATCHCORE.covers("eval.split.seed")
    assert not PATCHCORE.covers("freq.transform") and not PATCHCORE.covers("fewshot.weight_map")
    assert not PATCHCORE.covers("tracking.enabled") and not EVERYTHING.covers("tracking.uri")
    assert (
        PATCHCORE.touches("fewshot") and not PATCHCORE.touches("freq") and not PATCHCORE.touches("tracking")
    )
    assert not PATCHCORE.covers("methods") and EVERYTHING.covers("freq.transform")


def test_the_relevant_config_and_its_hash_leave_out_what_is_not_read():
    config = {
        "seed": 0,
        "method": {"name": "p", "k": 1},
        "freq": {"t": "dct"},
        "fewshot": {"k": 0, "weight_map": 1},
    }
    assert relevant(config, PATCHCORE) == {"seed": 0, "method": {"name": "p", "k": 1}, "fewshot": {"k": 0}}
    other = {
        **config,
        "freq": {"t": "fft"},
        "fewshot": {"k": 0, "weight_map": 2},
        "tracking": {"enabled": False},
    }
    assert identity_hash(other, PATCHCORE) == identity_hash(config, PATCHCORE)
    assert identity_hash({**config, "seed": 1}, PATCHCORE) != identity_hash(config, PATCHCORE)
    assert identity_hash(other, EVERYTHING) != identity_hash(config, EVERYTHING)


def test_variant_labels_name_the_method_once():
    assert variant_label("patchcore", "patchcore·tiny") == "patchcore·tiny"
    assert variant_label("patchcore", "fft") == "patchcore·fft"  # a run tagged before variants named methods
    assert variant_label(None, None) == "feclip·default"


def test_every_method_declares_what_it_reads_and_a_headline():
    for name, method in METHODS.items():
        assert method.reads.keys is not None and method.reads.headline, name
        assert all(method.reads.covers(key) for key in method.reads.headline), name
    assert set(SHARED) >= {"seed", "domain", "data", "eval", "gating"}


def test_params_are_what_the_method_reads_and_the_shared_keys():
    cfg = compose("method=patchcore")
    device, precision = compute_identity(cfg)
    params = job_params(cfg, job_reads(cfg), {"device": device, "precision": precision})
    assert {"method.coreset_ratio", "fewshot.k", "data.resize", "eval.split.seed", "seed", "device"} <= set(
        params
    )
    assert not [key for key in params if key.split(".")[0] in ("freq", "prompt", "model", "aux", "train")]
    assert "tracking.uri" not in params and "fewshot.weight_map" not in params
    full = job_params(compose(), job_reads(compose()), {"device": device, "precision": precision})
    assert {"freq.transform", "aux.fault.family", "prompt.templates", "fewshot.weight_map"} <= set(full)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def unread(method: str) -> list[str]:
    """Overrides that change every config group `method` does not read (another option where there is one)
    and every number of the config it does not read."""
    reads = METHODS.get_entry(method).reads
    defaults = compose(hydra=True).hydra.runtime.choices
    groups = [p.name for p in sorted(CONF.iterdir()) if p.is_dir() and p.name not in NOT_PERTURBED]
    options = [
        f"{group}={next(o for o in _options(group) if o != defaults[group])}"
        for group in groups
        if not reads.touches(group) and len(_options(group)) > 1
    ]
    cfg = compose(f"method={method}", *options)
    numbers = [
        f"{key}={value * 2 + 1 if isinstance(value, int) else value * 2 + 0.5}"
        for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)).items()
        if isinstance(value, (int, float))
        and not isinstance(value, bool)
        and not reads.covers(key)
        and key.split(".")[0] not in (*NOT_PERTURBED, "cache_dir", "compare")
    ]
    return [*options, *numbers]


@pytest.mark.parametrize(("method", "extra"), [("patchcore", []), ("winclip", ["fewshot.k=2"])])
def test_what_a_method_does_not_read_changes_none_of_its_scores(method, extra, tmp_path):
    """The declared `reads` against the code: PatchCore with freq=fft, FE-CLIP's model, prompts, training and
    source changed (the issue's 6 'fft' jobs) scores every image as the default does, and so for WinCLIP+."""
    changed = unread(method)
    assert any(o.startswith("freq=") for o in changed) and any(o.startswith("train.") for o in changed)
    outputs = []
    for name, overrides in (("plain", []), ("changed", changed)):
        args = [f"method={method}", *small_data(tmp_path), "tracking=off", "eval.figures=false", *extra]
        cfg = compose(*args, *overrides, f"cache_dir={tmp_path / name / 'cache'}")  # nothing shared but data
        main(cfg, tmp_path / name, JobInfo(name, name))
        outputs.append(tmp_path / name)
        assert config_hash(cfg) == config_hash(compose(*args)), overrides
    plain, other = (pd.read_csv(folder / "scores.csv") for folder in outputs)
    pd.testing.assert_frame_equal(plain, other)
    metrics = [read_json(Path(folder) / METRICS_FILE)["metrics"] for folder in outputs]
    assert metrics[0] == metrics[1]
