"""The HDMAP job: fit the method, then score every test image of the domain under the HDMAP protocols.

data (domain + validation slice) -> method (built, fitted on its training source) -> optional reference banks
and gate -> test and validation predictions -> metrics -> scores.csv, figures, the saved model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from feclip.cache import frozen_features
from feclip.condition import aware
from feclip.data import synthetic
from feclip.data.hdmap import COLD_WARM_SPLIT, DOMAINS, HDMAPData, data_hash, load_domain, split_validation
from feclip.data.sets import labelled_set
from feclip.data.sources import AUX_SOURCES, SourceContext
from feclip.data.transforms import HDMAPInput
from feclip.evaluation import calibration
from feclip.evaluation.figures import write_figures
from feclip.evaluation.inference import evaluate_hdmap, predict, scores_table
from feclip.evaluation.predictor import save_predictor
from feclip.jobs.common import RANDOM_INIT_NOTE, JobRecord, epoch_logger
from feclip.methods.base import Method
from feclip.methods.registry import build_method
from feclip.runtime import Runtime, runtime

SCORE_COLUMNS = {
    "score": "image anomaly score (higher = more anomalous)",
    "map_max": "max of the anomaly map",
    "map_topk": "mean of the top-k anomaly map values (eval.calibration.topk)",
    "gate": "condition the gate routed the image to (gated runs)",
    "gate_p_cold": "the gate's confidence that the image is cold (gated runs)",
}


def hdmap_root(cfg: DictConfig) -> Path:
    """The HDMAP folder; the synthetic one is generated on first use (all four domains, seconds)."""
    root = Path(cfg.data.root)
    if cfg.data.synthetic is not None:
        synthetic.ensure(root, domains=DOMAINS, **OmegaConf.to_container(cfg.data.synthetic))
    return root


def cold_warm_split(cfg: DictConfig) -> int:
    """`data.cold_warm_split`, else the layout of the data: half the synthetic test set, or HDMAP's 500."""
    if cfg.data.cold_warm_split is not None:
        return cfg.data.cold_warm_split
    return cfg.data.synthetic.n_test // 2 if cfg.data.synthetic is not None else COLD_WARM_SPLIT


def hdmap_input(cfg: DictConfig, method: Method) -> HDMAPInput:
    """Raw HDMAP maps -> the method's input: full-frame resize (`data.resize`), intensity, normalisation."""
    mean, std = method.input_stats()
    data = cfg.data
    return HDMAPInput(
        method.input_size, resize=data.resize, intensity=data.intensity, scale=data.scale, mean=mean, std=std
    )


def fit_method(
    cfg: DictConfig, rt: Runtime, method: Method, *, root: Path, fit: HDMAPData, to_input, record: JobRecord
) -> dict:
    """Build the training source and fit the method; per-epoch losses are recorded as they come."""
    mean, std = method.input_stats()
    ctx = SourceContext(root, cold_warm_split(cfg), fit, to_input, method.input_size, mean, std)
    aux = AUX_SOURCES.get_entry(cfg.aux.source).build(cfg, ctx)
    normals = labelled_set(fit.images, np.zeros(len(fit), dtype=np.int64), to_input)

    def frozen(images):
        return frozen_features(method, images, rt)

    return method.fit(normals=normals, aux=aux, rt=rt, frozen=frozen, log_epoch=epoch_logger(record))


def hdmap_job(cfg: DictConfig, output_dir: Path, record: JobRecord) -> dict[str, float]:
    """Train on the auxiliary source, then score every test image of the domain under the HDMAP protocols."""
    rt = runtime(cfg)
    root = hdmap_root(cfg)
    split, allow_integer = cold_warm_split(cfg), cfg.data.allow_integer
    data = load_domain(root, cfg.domain.name, cold_warm_split=split, allow_integer=allow_integer)
    log_dataset(cfg, record, data, root)
    fit, val = split_validation(
        data.subset((data.meta["split"] == "train").to_numpy()), cfg.data.val_fraction, cfg.seed
    )
    AUX_SOURCES.get_entry(cfg.aux.source).check(cfg, len(fit))  # something to train on, before the model
    method = build_method(cfg).to(rt.device)
    record.set_tags(method.tags())
    to_input = hdmap_input(cfg, method)
    test = data.subset((data.meta["split"] == "test").to_numpy())
    fit_method(cfg, rt, method, root=root, fit=fit, to_input=to_input, record=record)
    refs = aware.build(cfg, method, fit, test, to_input, rt)
    native = tuple(data.images.shape[-2:])

    def score(part: HDMAPData, rescore):
        images = labelled_set(part.images, part.meta["label"], to_input)
        frozen = frozen_features(method, images, rt)
        return predict(
            method,
            images,
            rt,
            map_size=native,
            frozen=frozen,
            rescore=rescore,
            topk=cfg.eval.calibration.topk,
        )

    test_pred = score(test, refs.scorer if refs else None)
    val_pred = score(val, refs.scorer.for_images(val.images, val.meta, refs.deployable) if refs else None)
    keep = refs.keep if refs else np.ones(len(test), dtype=bool)
    scored = test.with_predictions(test_pred.columns(), test_pred.maps).subset(keep)
    metrics = evaluate_hdmap(scored, val_pred.scores, cfg.eval.val_percentile)
    if refs:
        metrics.update(refs.metrics(scored.meta))
    scores_table(scored, list(test_pred.columns())).to_csv(output_dir / "scores.csv", index=False)
    write_scores_info(output_dir / "scores_info.json", cfg, method)
    record.log_metrics(metrics)  # on disk and in the run before anything else can fail
    save_model(cfg, output_dir / "checkpoint", method, to_input, val=val, val_pred=val_pred, refs=refs)
    if cfg.eval.figures:
        caption = RANDOM_INIT_NOTE if method.random_init else ""
        figures = write_figures(
            output_dir / "figures",
            scored,
            metrics,
            title=record.title,
            caption=caption,
            n_examples=cfg.eval.n_map_examples,
        )
        record.log_images(figures)
    return metrics


def log_dataset(cfg: DictConfig, record: JobRecord, data: HDMAPData, root: Path) -> None:
    """The domain's dataset as the run's input: name, content digest, folder, image counts."""
    kind = "synthetic_hdmap" if cfg.data.synthetic is not None else "hdmap"
    counts = data.meta.groupby(["split", "label"]).size()
    profile = {f"{split}_{'fault' if label else 'good'}": int(n) for (split, label), n in counts.items()}
    folder = Path(root) / f"domain_{cfg.domain.name}"
    record.log_input(
        f"{kind}_{cfg.domain.name}", data_hash(data), str(folder), context="train+test", profile=profile
    )


def write_scores_info(path: Path, cfg: DictConfig, method: Method) -> None:
    """The sidecar of scores.csv: what produced the scores and whether they are random-init numbers."""
    info = {
        "method": method.name,
        "backbone": cfg.backbone.name,
        "random_init": method.random_init,
        "note": RANDOM_INIT_NOTE if method.random_init else "",
        "columns": SCORE_COLUMNS,
    }
    path.write_text(json.dumps(info, indent=2))


def save_model(
    cfg: DictConfig, directory: Path, method: Method, to_input: HDMAPInput, *, val, val_pred, refs
) -> None:
    """The method, and what applying it later needs: input transform, calibration record, banks, gate."""
    context = {
        "method": method.name,
        "backbone": cfg.backbone.name,
        "pretrained": cfg.backbone.pretrained,
        "input": to_input.spec(),
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
    save_predictor(directory, method, to_input, record, refs, tuple(val.images.shape[-2:]))
