"""feclip's Python API: compose a config, run a job, load a study's runs, apply a saved model.

    from feclip import api

    cfg = api.compose("experiment=smoke", "domain=A")   # what `feclip run experiment=smoke domain=A` runs
    metrics = api.run(cfg, "jobs/A")                    # one job into jobs/A: {metric: value}
    table = api.runs("jobs")                            # one row per finished job (folders, or a store's URI)
    model = api.load_model("jobs/A/checkpoint")         # the saved model with its thresholds
    scores = api.score(model, maps)                     # maps (N, 31, 95) float32 -> one row per map

The same code as the command line runs underneath (`feclip run`, `feclip report`, `feclip predict`); what
the command line prints as a one-line error is raised here as a `feclip.errors.FeclipError` with that line.
A model on the tiny random-init backbone (`backbone=tiny`, the default) gives meaningless detection numbers:
`Model.random_init` says so, and so does every run it makes (`random_init` column, `feclip.random_init` tag).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from feclip import CONF_DIR
from feclip.errors import FeclipError
from feclip.evaluation.predictor import (
    Predictor,
    checkpoint_identity,
    list_inputs,
    load_predictor,
    predict_arrays,
    predict_files,
    predict_precision,
)
from feclip.jobs.run import run as run_job
from feclip.methods.registry import job_reads
from feclip.runtime import DEVICES, Runtime, compute_identity
from feclip.tracking import JobInfo
from feclip.tracking.report import collect_runs, folder_runs

DEFAULT_EXPERIMENT = "feclip"  # tracking.experiment of the packaged config


def compose(*overrides: str, hydra: bool = False) -> DictConfig:
    """The config `feclip run <overrides>` runs: `feclip/conf/` composed with Hydra overrides (`group=option`,
    `key=value`, `hydra.searchpath=[file:///my/conf]` for a config folder of one's own). `hydra`: keep the
    `hydra` node (the group choices, by which `run` names the job as `feclip run` does)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=hydra)


def run(config: DictConfig | Sequence[str], folder: str | Path) -> dict[str, float]:
    """Run one job into `folder` (its job folder: config.yaml, run.json, metrics.json, scores.csv, figures/,
    checkpoint/), tracked as the config's `tracking.*` says; returns its metrics {name: value} (AUROC, AP and
    accuracies in [0, 1], thresholds `thr_*` in score units, counts `n_*`; NaN where undefined).

    `config`: overrides (as for `compose`) or a composed config. The run is named as `feclip run` names it
    when the group choices are known (overrides, or `compose(..., hydra=True)`), else by the values that
    differ from the default config. Relative paths in the config mean the current folder."""
    cfg = config if isinstance(config, DictConfig) else compose(*config, hydra=True)
    job_cfg = OmegaConf.masked_copy(cfg, [key for key in cfg if key != "hydra"])
    metrics, _ = run_job(job_cfg, Path(folder), job_info(cfg))
    return {name: float("nan") if value is None else value for name, value in metrics.items()}


def job_info(cfg: DictConfig) -> JobInfo:
    """The run name and variant `run` gives the job of `cfg`: `feclip run`'s when `cfg` has its `hydra` node
    (the group choices), else by the values that differ from the default config; either way in the keys its
    method reads (`feclip.methods.registry.job_reads`)."""
    reads = job_reads(cfg)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):  # names compose their base
        if "hydra" in cfg:
            return JobInfo.from_hydra(cfg, cfg.hydra, reads)
        return JobInfo.from_config(cfg, reads)


def runs(source: str | Path, experiment: str | None = None) -> pd.DataFrame:
    """One row per FINISHED job, newest first: run_id, run_name, domain, variant (`<method> · <variant>`),
    seed, backbone, precision, device, random_init, deployable, eval_set, ..., then one column per metric
    (as `run` returns them).

    `source`: a job folder, or a sweep folder or any folder of job folders, read from their run.json and
    metrics.json without a store (column `folder`); or a tracking URI (`sqlite:///mlflow.db`,
    `http://host:5000`) with `experiment` (default `feclip`, the config's `tracking.experiment`), where a
    rerun of the same variant, domain and seed replaces the earlier one."""
    if "://" in str(source):
        return collect_runs(str(source), experiment or DEFAULT_EXPERIMENT)
    if experiment is not None:
        raise FeclipError(
            f"runs({str(source)!r}, experiment={experiment!r}): a folder has no experiments; expected a "
            "tracking URI (sqlite:///path/mlflow.db) with experiment=, or the folder alone"
        )
    if not Path(source).is_dir():
        raise FeclipError(
            f"{source}: no such folder; expected a job or sweep folder, or a tracking URI (sqlite:///...)"
        )
    return folder_runs(source)


@dataclass(frozen=True)
class Model:
    """A saved model ready to score: the predictor (method, input transform, calibration record, banks,
    gate), the runtime it scores with (device; the precision its thresholds were calibrated at) and the
    identity of the run that saved it (method, domain, backbone, random_init, precision, device)."""

    predictor: Predictor
    runtime: Runtime
    identity: dict[str, Any]

    @property
    def random_init(self) -> bool:
        """True for a random-init backbone: its scores test the pipeline, not the method."""
        return bool(self.identity.get("random_init"))

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the maps it was calibrated on (HDMAP: (31, 95))."""
        return self.predictor.image_shape


def load_model(
    checkpoint: str | Path, device: str = "auto", *, batch_size: int = 64, weights: str | None = None
) -> Model:
    """The model saved in `checkpoint` (`<job folder>/checkpoint`), on `device` (auto | cpu | cuda), scoring
    `batch_size` maps at a time; `weights`: where its backbone weights file is now, if it moved. An edited
    checkpoint is refused (its manifest)."""
    DEVICES.get_entry(device, "device")
    identity = checkpoint_identity(checkpoint)
    device_type, _ = compute_identity(SimpleNamespace(device=device, precision="auto"))
    calibrated = identity.get("precision", "unknown")
    precision = predict_precision("auto", device_type, calibrated, allow_change=False)
    predictor = load_predictor(checkpoint, torch.device(device_type), weights=weights)
    return Model(predictor, Runtime(torch.device(device_type), precision, batch_size=batch_size), identity)


def score(
    model: Model,
    data: np.ndarray | Sequence[np.ndarray] | str | Path | Sequence[str | Path],
    *,
    operating_point: str | None = None,
) -> pd.DataFrame:
    """One row per map, in input order, as `feclip predict` writes predictions.csv.

    `data`: maps in the units of the HDMAP TIFFs (float32, no normalisation: the model's input transform
    applies it), as an array (N, H, W) or a list of (H, W) arrays; or TIFF files: a folder, a glob, or a
    list of paths. `operating_point`: where decisions are taken (default the model's stored one, e.g. `fa1`:
    the threshold at 1 % false alarms on normals it never scored; `fa5`, `p99`, ...).

    Columns: `index` (arrays) or `path` (files); `status` (ok | shape_mismatch HxW: scored, another shape
    than calibrated | error: why it was not scored); `score` (the image anomaly score, in the model's own
    units: compare it with the model's thresholds, not across models); `map_max` (the anomaly map's
    maximum); `decision` (fault | normal at the operating point); `zscore` (the score in standard deviations
    of the calibration normals); `gate` (cold | warm, for gated models)."""
    point = operating_point or model.predictor.record["operating_point"]
    if isinstance(data, (str, Path)):
        return predict_files(model.predictor, list_inputs(str(data)), model.runtime, operating_point=point)
    if len(data) and isinstance(data[0], (str, Path)):
        files = [Path(path) for path in data]
        return predict_files(model.predictor, files, model.runtime, operating_point=point)
    return predict_arrays(model.predictor, list(data), model.runtime, operating_point=point)
