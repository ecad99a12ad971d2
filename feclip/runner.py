"""One experiment job: config -> data -> model -> training -> evaluation -> files + MLflow run.

`run.py` composes the Hydra config and calls `main`. A job is `train_eval` on HDMAP (`eval=hdmap`) or on the
paper's benchmarks (`eval=mvtec|visa_btad`), or `predict` with a saved model. Results are written to the job's
output folder first and logged to MLflow after, so a tracking failure loses nothing.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from feclip import calibration, condition_aware, config, tracking
from feclip.errors import FeclipError
from feclip.cache import pre_tap_tokens, weights_fingerprint
from feclip.data import synthetic
from feclip.data.faults import BandFaultConfig, inject_band_faults
from feclip.data.hdmap import DOMAINS, HDMAPData, data_hash, load_domain
from feclip.data.sets import ImageSet, labelled_set
from feclip.data.transforms import HDMAPInput
from feclip.evaluate import Predictions, evaluate_hdmap, predict, scores_table
from feclip.model.backbone import ClipBackbone
from feclip.model.checkpoint import load_checkpoint, save_checkpoint
from feclip.model.feclip import FEClip, FEClipConfig
from feclip.model.prompts import text_features
from feclip.train import TrainConfig, train

RANDOM_INIT_NOTE = "random-init backbone: numbers test the pipeline, not FE-CLIP"


def is_user_error(error: BaseException) -> bool:
    """Errors about the user's input (config, data, URIs): printed as one line instead of a traceback."""
    return isinstance(error, FeclipError)


@dataclass
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16
    autocast: contextlib.AbstractContextManager

    def tokens(self, cfg: DictConfig, model: FEClip) -> Callable[[ImageSet], torch.Tensor | None]:
        """images -> their frozen pre-tap tokens (N, T, D) per `train.token_cache`, or None."""
        weights = weights_fingerprint(model.backbone) if cfg.train.token_cache == "disk" else None
        return lambda images: pre_tap_tokens(
            model,
            images,
            cfg.train.token_cache,
            cfg.eval.batch_size,
            self.device,
            self.autocast,
            self.precision,
            cfg.cache_dir,
            weights,
        )


def runtime(cfg: DictConfig) -> Runtime:
    """Device and autocast from `device` / `precision` (auto: bf16 autocast on CUDA, fp32 on CPU)."""
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise config.ConfigError("device=cuda but torch sees no CUDA device; use device=cpu or device=auto")
    device = torch.device("cuda" if cfg.device == "cuda" or (cfg.device == "auto" and cuda) else "cpu")
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    if precision == "bf16":
        return Runtime(device, precision, torch.autocast(device.type, dtype=torch.bfloat16))
    return Runtime(device, precision, contextlib.nullcontext())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prompt_lists(prompt: DictConfig) -> tuple[list[str], list[str], list[str]]:
    """(normal, abnormal, templates) with the class name put into every state phrase."""
    normal = [state.format(prompt.class_name) for state in prompt.normal]
    abnormal = [state.format(prompt.class_name) for state in prompt.abnormal]
    return normal, abnormal, list(prompt.templates)


def model_config(cfg: DictConfig) -> FEClipConfig:
    """FEClipConfig from the `model` and `freq` groups (aux=none, no checkpoint: the plain CLIP baseline)."""
    plain_clip = cfg.aux.source == "none" and not cfg.model.checkpoint
    return FEClipConfig(
        taps=cfg.model.taps if isinstance(cfg.model.taps, str) else list(cfg.model.taps),
        n_taps=cfg.model.n_taps,
        lam=cfg.model.lam,
        freq=cfg.freq.transform,
        ffe=cfg.freq.ffe.enabled,
        ffe_window=tuple(cfg.freq.ffe.window),
        lfs=cfg.freq.lfs.enabled,
        lfs_window=tuple(cfg.freq.lfs.window),
        lfs_statistic=cfg.freq.lfs.statistic,
        lfs_kernel=cfg.freq.lfs.kernel,
        conv_adapter=cfg.freq.conv_adapter,
        adapters=cfg.model.adapters and not plain_clip,
        temperature=cfg.model.temperature,
        score=cfg.model.score,
        map=cfg.model.map,
        smoothing_sigma=cfg.model.smoothing_sigma,
    )


def build_model(cfg: DictConfig, device: torch.device) -> FEClip:
    """Frozen backbone + FE-CLIP head with the prompt set's text features (seeded for random init)."""
    seed_everything(cfg.seed)
    backbone = ClipBackbone(cfg.backbone.name, cfg.backbone.pretrained)
    size = tuple(cfg.backbone.input_size)
    model = FEClip(backbone, model_config(cfg), text_features(backbone, *prompt_lists(cfg.prompt)), size)
    if cfg.model.checkpoint:
        load_checkpoint(cfg.model.checkpoint, model, input_size=size)
    return model.to(device)


def input_spec(cfg: DictConfig) -> dict:
    """How raw HDMAP images become model input (saved with the checkpoint)."""
    return {
        "size": list(cfg.backbone.input_size),
        "resize": cfg.data.resize,
        "intensity": cfg.data.intensity,
        "scale": cfg.data.scale,
        "pretrained": cfg.backbone.pretrained,
    }


def hdmap_input(spec: dict, backbone: ClipBackbone) -> HDMAPInput:
    return HDMAPInput(
        tuple(spec["size"]),
        resize=spec["resize"],
        intensity=spec["intensity"],
        scale=spec["scale"],
        mean=backbone.mean,
        std=backbone.std,
    )


def hdmap_root(cfg: DictConfig) -> Path:
    """The HDMAP folder; the synthetic one is generated on first use (all four domains, seconds)."""
    root = Path(cfg.data.root)
    if cfg.data.synthetic is not None:
        synthetic.ensure(root, domains=DOMAINS, **OmegaConf.to_container(cfg.data.synthetic))
    return root


def split_validation(train: HDMAPData, fraction: float, seed: int) -> tuple[HDMAPData, HDMAPData]:
    """(fit, val): a seeded slice of train normals, never trained on, for thresholds and calibration."""
    order = np.random.default_rng(seed).permutation(len(train))
    n_val = max(1, round(fraction * len(train)))
    return train.subset(np.sort(order[n_val:])), train.subset(np.sort(order[:n_val]))


def training_set(cfg: DictConfig, root: Path, fit: HDMAPData, to_input: HDMAPInput) -> ImageSet | None:
    """The auxiliary training source named by `aux.source` (None: no training)."""
    if cfg.aux.source == "synthetic_faults":
        normals = fit.images[: cfg.aux.max_normals] if cfg.aux.max_normals else fit.images
        generator = torch.Generator().manual_seed(cfg.seed)
        picks = torch.randint(
            len(normals), (round(cfg.aux.faults_per_normal * len(normals)),), generator=generator
        )
        fault_cfg = BandFaultConfig(**OmegaConf.to_container(cfg.aux.fault))
        faulty, fault_masks = inject_band_faults(normals[picks], fault_cfg, generator)
        masks = torch.cat([torch.zeros(normals.shape, dtype=torch.uint8), fault_masks])
        return labelled_set(
            torch.cat([normals, faulty]), [0] * len(normals) + [1] * len(picks), to_input, masks
        )
    if cfg.aux.source == "hdmap_other_domains":
        parts = [
            _capped(load_domain(root, d, splits=("test",)), cfg.aux.max_per_domain, cfg.seed)
            for d in DOMAINS
            if d != cfg.domain.name
        ]
        labels = np.concatenate([p.meta["label"].to_numpy() for p in parts])
        return labelled_set(torch.cat([p.images for p in parts]), labels, to_input)
    return None


def _capped(data: HDMAPData, cap: int | None, seed: int) -> HDMAPData:
    return data.subset(np.sort(np.random.default_rng(seed).permutation(len(data))[:cap])) if cap else data


def fit_adapters(cfg: DictConfig, rt: Runtime, model: FEClip, data: ImageSet | None, tracker, tokens) -> dict:
    """Train when there is a training source and epochs > 0; returns the loss history.

    tokens: images -> frozen pre-tap tokens or None (`Runtime.tokens`)."""
    if data is None or cfg.train.epochs == 0:
        return {}
    train_cfg = TrainConfig(**{k: v for k, v in cfg.train.items() if k != "token_cache"})

    def log_epoch(epoch: int, losses: dict[str, float]) -> None:
        tracker.log_metrics({f"train_{name}": value for name, value in losses.items()}, step=epoch)

    return train(model, data, train_cfg, rt.device, rt.autocast, cfg.seed, tokens(data), log_epoch)


def job_tags(cfg: DictConfig, job: tracking.JobInfo) -> dict[str, str]:
    return {
        "domain": cfg.domain.name if cfg.eval.protocol == "hdmap" else "-",
        "variant": job.variant,
        "seed": str(cfg.seed),
        "backbone": cfg.backbone.name,
        "mode": cfg.mode,
        "feclip.random_init": str(cfg.backbone.pretrained is None).lower(),
        **{f"choice.{group}": str(option) for group, option in job.choices.items() if "/" not in group},
    }


def tracked_job(cfg: DictConfig, output_dir: Path, job: tracking.JobInfo, body) -> dict[str, float]:
    """Run `body(cfg, output_dir, tracker) -> metrics` inside an MLflow run; files first, then logging."""
    uri = tracking.resolve_tracking_uri(cfg.tracking.uri)
    if cfg.tracking.enabled:
        tracking.check_tracking_uri(uri)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tracker = tracking.Tracker(
        uri,
        cfg.tracking.experiment,
        job.run_name,
        job_tags(cfg, job),
        parent_run_id=job.parent_run_id,
        enabled=cfg.tracking.enabled,
    )
    with tracker:
        tracker.log_params(tracking.flatten_config(OmegaConf.to_container(cfg, resolve=True)))
        metrics = body(cfg, output_dir, tracker)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        tracker.log_metrics(metrics)
        tracker.log_artifacts(output_dir)
    return metrics


def main(
    cfg: DictConfig, output_dir: Path | None = None, job: tracking.JobInfo | None = None
) -> float | None:
    """Validate, then run the job `cfg.mode` / `cfg.eval.protocol` asks for; returns the headline metric."""
    config.validate(cfg)
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = Path(HydraConfig.get().runtime.output_dir)
    job = job or tracking.JobInfo.from_hydra()
    if cfg.mode == "predict":
        from feclip.predict import predict_job

        return tracked_job(cfg, output_dir, job, predict_job).get("n_flagged")
    if cfg.eval.protocol == "hdmap":
        return tracked_job(cfg, output_dir, job, hdmap_job)["auroc"]
    from feclip.benchmark import benchmark_job

    return tracked_job(cfg, output_dir, job, benchmark_job).get("image_auroc")


def hdmap_job(cfg: DictConfig, output_dir: Path, tracker) -> dict[str, float]:
    """Train on the auxiliary source, then score every test image of the domain under the HDMAP protocols."""
    rt = runtime(cfg)
    root = hdmap_root(cfg)
    data = load_domain(root, cfg.domain.name, cold_warm_split=cfg.data.cold_warm_split)
    model = build_model(cfg, rt.device)
    to_input = hdmap_input(input_spec(cfg), model.backbone)
    fit, val = split_validation(
        data.subset((data.meta["split"] == "train").to_numpy()), cfg.data.val_fraction, cfg.seed
    )
    test = data.subset((data.meta["split"] == "test").to_numpy())
    tokens = rt.tokens(cfg, model)
    history = fit_adapters(cfg, rt, model, training_set(cfg, root, fit, to_input), tracker, tokens)
    refs = condition_aware.build(cfg, model, fit, test, to_input, rt)
    native = tuple(data.images.shape[-2:])
    scorer = refs.scorer if refs else None

    def score(part: HDMAPData, rescore) -> Predictions:
        images = labelled_set(part.images, part.meta["label"], to_input)
        return predict(
            model,
            images,
            cfg.eval.batch_size,
            rt.device,
            rt.autocast,
            native,
            tokens(images),
            rescore,
            cfg.eval.calibration.topk,
        )

    test_pred = score(test, scorer)
    val_pred = score(val, scorer.for_images(val.images, val.meta) if scorer else None)
    keep = refs.keep if refs else np.ones(len(test), dtype=bool)
    scored, scored_test = test_pred.subset(keep), test.subset(keep)
    metrics = evaluate_hdmap(
        scored, scored_test.meta, val_pred.scores, cfg.eval.val_percentile, scored_test.masks
    )
    if refs:
        metrics.update(refs.metrics(scored.extra, scored_test.meta))
    scores_table(scored, scored_test.meta).to_csv(output_dir / "scores.csv", index=False)
    save_model(cfg, output_dir / "checkpoint", model, val, val_pred, refs)
    if cfg.eval.figures:
        write_figures(output_dir / "figures", scored, scored_test, metrics, history, cfg)
    return metrics


def save_model(
    cfg: DictConfig, directory: Path, model: FEClip, val: HDMAPData, val_pred: Predictions, refs
) -> None:
    """Adapters + fc, and what applying the model later needs: input transform, calibration record, gate."""
    from feclip.predict import save_predictor

    context = {
        "backbone": cfg.backbone.name,
        "pretrained": cfg.backbone.pretrained,
        "input": input_spec(cfg),
        "prompt": OmegaConf.to_container(cfg.prompt),
        "domain": cfg.domain.name,
        "fitted_on": f"{len(val)} held-out train/good images of {cfg.data.root}",
        "data_hash": data_hash(val),
    }
    record = calibration.fit(
        {"score": val_pred.scores, "map_max": val_pred.map_max, "map_topk": val_pred.map_topk},
        list(cfg.eval.calibration.percentiles),
        cfg.eval.calibration.operating_point,
        context,
    )
    save_checkpoint(directory, model, extra={"references": refs.state if refs else None})
    gate = refs.state["gate"] if refs else None
    save_predictor(directory, model, input_spec(cfg), record, gate, tuple(val.images.shape[-2:]))


def write_figures(
    directory: Path, pred: Predictions, test: HDMAPData, metrics: dict, history: dict, cfg: DictConfig
) -> None:
    """ROC curves, score histograms, the anomaly-map grid (worst misses first) and the loss curves as PNGs."""
    from feclip import plots

    directory.mkdir(parents=True, exist_ok=True)
    meta, images = test.meta, test.images
    caption = RANDOM_INIT_NOTE if cfg.backbone.pretrained is None else ""
    labels, condition = meta["label"].to_numpy(), meta["condition"].to_numpy()
    thresholds = {
        name: metrics[f"thr_{name}"]
        for name in ("oracle", "val")
        if np.isfinite(metrics.get(f"thr_{name}", np.nan))
    }
    figures = {
        "roc.png": plots.roc_curves(pred.scores, labels, condition, caption=caption),
        "score_histograms.png": plots.score_histograms(
            pred.scores, labels, condition, thresholds, caption=caption
        ),
    }
    worst = _worst_misses(
        pred.scores, labels, metrics.get("thr_oracle", np.median(pred.scores)), cfg.eval.n_map_examples
    )
    names = (
        meta["condition"]
        + " "
        + np.where(labels == 1, "fault", "good")
        + " #"
        + meta["file_index"].astype(str)
    )
    titles = [f"{names[i]} s={pred.scores[i]:.3f}" for i in worst]
    figures["anomaly_maps.png"] = plots.anomaly_map_grid(
        images[worst], pred.maps[worst].float(), titles, caption=caption
    )
    if history:
        figures["loss.png"] = plots.loss_curves(history, caption=caption)
    for name, figure in figures.items():
        figure.savefig(directory / name, dpi=110)


def _worst_misses(scores: np.ndarray, labels: np.ndarray, threshold: float, n: int) -> np.ndarray:
    """Indices by how wrong they are at `threshold`: missed faults and false alarms, largest margin first."""
    margin = np.where(labels == 1, threshold - scores, scores - threshold)
    return np.argsort(-margin, kind="stable")[:n]
