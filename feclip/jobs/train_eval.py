"""The HDMAP job: fit the method, then score the domain's test images under the HDMAP protocols.

data (domain + validation slice, the study split of the test set) -> method (built, fitted on its training
source) -> optional reference banks and gate (from the split's refs part) -> dev, test and threshold-normal
predictions -> calibration record (deployable thresholds) -> metrics (`dev/` for the dev part) -> scores.csv,
figures, the saved model.
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
from feclip.evaluation.compare import FLAG, run_intervals
from feclip.evaluation.figures import write_figures
from feclip.evaluation.inference import evaluate_hdmap, predict, scores_table
from feclip.evaluation.metrics.image import val_threshold
from feclip.evaluation.predictor import save_predictor
from feclip.evaluation.split import SCORED_PARTS, StudySplit, eval_set, split_test
from feclip.files import write_text
from feclip.jobs.common import RANDOM_INIT_NOTE, JobRecord, config_identity, epoch_logger
from feclip.methods.base import Method
from feclip.methods.registry import build_method, job_reads
from feclip.runtime import Runtime, runtime

SCORE_COLUMNS = {
    "score": "image anomaly score (higher = more anomalous)",
    "map_max": "max of the anomaly map",
    "map_topk": "mean of the top-k anomaly map values (eval.calibration.topk)",
    "gate": "condition the gate routed the image to (gated runs)",
    "gate_p_cold": "the gate's confidence that the image is cold (gated runs)",
    "flag_val": "the run's decision at thr_val (eval.val_percentile of the held-out normals): fault",
    "flag_<point>": "the run's decision at a false-alarm point (fa1, fa5, ...; per condition when the "
    "thresholds are): fault",
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


def _no_log(epoch: int, losses: dict[str, float]) -> None:
    """The default `log_epoch`: losses are not recorded."""


def fit_method(
    cfg: DictConfig, rt: Runtime, method: Method, *, root: Path, fit: HDMAPData, to_input, log_epoch=_no_log
) -> dict:
    """Build the training source and fit the method; `log_epoch(epoch, losses)` records them as they come."""
    mean, std = method.input_stats()
    ctx = SourceContext(root, cold_warm_split(cfg), fit, to_input, method.input_size, mean, std)
    reads_aux = method.reads.covers("aux.source")  # PatchCore and WinCLIP train on nothing: none is built
    aux = AUX_SOURCES.get_entry(cfg.aux.source).build(cfg, ctx) if reads_aux else None
    normals = labelled_set(fit.images, np.zeros(len(fit), dtype=np.int64), to_input)

    def frozen(images):
        return frozen_features(method, images, rt)

    return method.fit(normals=normals, aux=aux, rt=rt, frozen=frozen, log_epoch=log_epoch)


def hdmap_job(cfg: DictConfig, output_dir: Path, record: JobRecord) -> dict[str, float]:
    """Train on the auxiliary source, then score the study split's dev and test parts of the domain (every
    test image under eval.split.protocol=whole_test) under the HDMAP protocols."""
    rt = runtime(cfg)
    root = hdmap_root(cfg)
    split, allow_integer = cold_warm_split(cfg), cfg.data.allow_integer
    data = load_domain(root, cfg.domain.name, cold_warm_split=split, allow_integer=allow_integer)
    log_dataset(cfg, record, data, root)
    fit, val = split_validation(
        data.subset((data.meta["split"] == "train").to_numpy()), cfg.data.val_fraction, cfg.seed
    )
    if job_reads(cfg).covers("aux.source"):  # something to train on, before the model
        AUX_SOURCES.get_entry(cfg.aux.source).check(cfg, len(fit))
    method = build_method(cfg).to(rt.device)
    record.set_tags(method.tags())
    record.mark_deployable(aware.reads_test_labels(cfg))
    to_input = hdmap_input(cfg, method)
    test = data.subset((data.meta["split"] == "test").to_numpy())
    study = split_test(test.meta, cfg.eval.split)
    fit_method(cfg, rt, method, root=root, fit=fit, to_input=to_input, log_epoch=epoch_logger(record))
    pool = test.subset(study.pool)
    refs = aware.build(cfg, method, fit, pool, to_input, rt)
    score = scorer(cfg, method, to_input, rt, refs=refs, map_size=tuple(data.images.shape[-2:]))
    rows = scored_rows(study, refs, scored_parts(cfg))
    scored = score(test.subset(rows), refs.scorer.gate if refs else None)
    val_scored = score(val, refs.deployable if refs else None)
    normals = val_scored if cfg.eval.threshold.source == "val" else threshold_refs(pool, refs, score)
    calibrated = calibrate(
        cfg, normals, context=calibration_context(cfg, method, to_input, normals, refs=refs)
    )
    val_scores = val_scored.meta["score"].to_numpy()
    scored = with_flags(cfg, scored, val_scores, refs, calibrated)
    parts = {name: scored.subset(study.part[rows] == name) for name in ("test", "dev")}
    metrics = study_metrics(cfg, record, parts, val_scores, refs, calibrated)
    columns = [c for c in scored.meta if c in SCORE_COLUMNS or c.startswith(FLAG)]
    table = scores_table(scored, columns).assign(split=study.part[rows])
    write_text(output_dir / "scores.csv", table.to_csv(index=False))  # whole or absent: compare reads it
    write_scores_info(output_dir / "scores_info.json", cfg, method)
    record.log_metrics(metrics)  # on disk and in the run before anything else can fail
    directory = output_dir / "checkpoint"
    shape = tuple(data.images.shape[-2:])
    save_predictor(directory, method, to_input, calibrated, refs, shape, identity=config_identity(cfg))
    if cfg.eval.figures:
        caption = RANDOM_INIT_NOTE if method.random_init else ""
        shown = "test" if len(parts["test"]) else "dev"
        figures = write_figures(
            output_dir / "figures",
            parts[shown],
            part_metrics_of(metrics, shown),
            title=record.title + ("" if shown == "test" else " · dev part"),
            caption=caption,
            n_examples=cfg.eval.n_map_examples,
        )
        record.log_images(figures)
    return metrics


def scored_parts(cfg: DictConfig) -> tuple[str, ...]:
    """The study parts the run scores (`eval.split.score`; a search's trials: dev only)."""
    return tuple(OmegaConf.select(cfg, "eval.split.score", default=None) or SCORED_PARTS)


def part_metrics_of(metrics: dict[str, float], part: str) -> dict[str, float]:
    """The metrics of one part under their plain names (the test part's are; the dev part's lose `dev/`),
    with the run's own (thresholds `thr_*`, counts: unprefixed, no part scored to make them) when the part
    is the only one scored."""
    if part == "test":
        return metrics
    prefix = f"{part}/"
    return {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix) or "/" not in k}


def scorer(cfg: DictConfig, method: Method, to_input: HDMAPInput, rt: Runtime, *, refs, map_size):
    """score(part, gate) -> part with its predictions (meta columns, native-size maps); gate: the gate that
    routes `part` to the reference banks (None without banks)."""

    def score(part: HDMAPData, gate) -> HDMAPData:
        images = labelled_set(part.images, part.meta["label"], to_input)
        rescore = refs.scorer.for_images(part.images, part.meta, gate) if refs else None
        frozen = frozen_features(method, images, rt)
        topk = cfg.eval.calibration.topk
        pred = predict(method, images, rt, map_size=map_size, frozen=frozen, rescore=rescore, topk=topk)
        return part.with_predictions(pred.columns(), pred.maps)

    return score


def scored_rows(
    study: StudySplit, refs: aware.References | None, parts: tuple[str, ...] = SCORED_PARTS
) -> np.ndarray:
    """(N_test,) bool: the scored `parts` (dev and test), less the pool rows taken as references (whole_test
    only: in the study split the pool is the refs part, never scored)."""
    rows = study.rows(*parts)
    if refs is not None:
        rows[np.flatnonzero(study.pool)[~refs.keep]] = False
    return rows


def threshold_refs(pool: HDMAPData, refs: aware.References | None, score) -> HDMAPData:
    """The refs normals that are not bank references, scored through the run's gate (source=refs)."""
    if refs is None:
        return score(pool, None)
    return score(pool.subset(refs.keep), refs.scorer.gate)


def with_flags(
    cfg: DictConfig, scored: HDMAPData, val_scores: np.ndarray, refs, calibrated: dict
) -> HDMAPData:
    """`scored` with the run's decision per image (meta flag_val, flag_<point>): what its acc_ metrics count
    and what a paired comparison (`feclip.evaluation.compare`) reads back from scores.csv."""
    scores = scored.meta["score"].to_numpy()
    flags = {f"{FLAG}val": scores > val_threshold(val_scores, cfg.eval.val_percentile)}
    groups = condition_groups(scored.meta, condition_from(cfg, refs))
    per_condition = groups if calibrated["per_condition"] else None
    for point in calibrated["thresholds"]:
        flags[f"{FLAG}{point}"] = calibration.decide(scores, calibrated, point, per_condition)
    return scored.with_predictions(flags, scored.maps)


def condition_from(cfg: DictConfig, refs: aware.References | None) -> str | None:
    """The meta column whose value picks each image's threshold: 'gate' (the gate's routing, gated runs),
    'condition' (the known condition), None for one global threshold (eval.threshold.per_condition=false)."""
    if not cfg.eval.threshold.per_condition:
        return None
    return "gate" if refs is not None and refs.scorer.gate.assigns_condition else "condition"


def condition_groups(meta, column: str | None) -> np.ndarray | None:
    """(N,) the condition picking each row's threshold (`condition_from`), or None (one global threshold)."""
    return None if column is None else meta[column].to_numpy().astype(str)


def calibrate(cfg: DictConfig, normals: HDMAPData, *, context: dict) -> dict:
    """The calibration record of the scored threshold normals: percentiles, false-alarm thresholds (per
    condition by `context["condition_from"]`)."""
    thresholds = calibration.fit_thresholds(
        normals.meta["score"].to_numpy(),
        condition_groups(normals.meta, context["condition_from"]),
        list(cfg.eval.threshold.false_alarm_rates),
        n_boot=cfg.eval.threshold.bootstrap,
        seed=cfg.seed,
    )
    return calibration.fit(
        {name: normals.meta[name].to_numpy() for name in calibration.STATISTICS},
        list(cfg.eval.calibration.percentiles),
        cfg.eval.calibration.operating_point,
        context,
        thresholds=thresholds,
    )


def calibration_context(
    cfg: DictConfig, method: Method, to_input: HDMAPInput, normals: HDMAPData, *, refs
) -> dict:
    """What a calibration record was fitted on, and what applying it later needs to match."""
    source = cfg.eval.threshold.source
    what = (
        "held-out train/good images"
        if source == "val"
        else f"refs test/good images (eval.split.seed={cfg.eval.split.seed}) outside the banks"
    )
    return {
        "method": method.name,
        "backbone": cfg.backbone.name,
        "pretrained": cfg.backbone.pretrained,
        "input": to_input.spec(),
        "prompt": OmegaConf.to_container(cfg.prompt),
        "domain": cfg.domain.name,
        "threshold_source": source,
        "condition_from": condition_from(cfg, refs),
        "fitted_on": f"{len(normals)} {what} of {cfg.data.root}",
        "data_hash": data_hash(normals),
    }


def study_metrics(
    cfg: DictConfig, record: JobRecord, parts: dict[str, HDMAPData], val_scores: np.ndarray, refs, calibrated
) -> dict[str, float]:
    """The thresholds' own metrics, then each non-empty part's (test: plain names, dev: `dev/<name>`) with
    its `eval_set` tag, and n_references_excluded for runs with reference banks."""
    metrics = calibration.threshold_metrics(calibrated)
    for name, part in parts.items():
        if len(part):
            prefix = "" if name == "test" else f"{name}/"
            found = part_metrics(cfg, part, val_scores, refs, calibrated)
            metrics.update({f"{prefix}{key}": value for key, value in found.items()})
            record.set_tags({f"{prefix}eval_set": eval_set(part.meta)})
    if refs:
        metrics["n_references_excluded"] = float(refs.state["n_excluded"])
    return metrics


def part_metrics(cfg: DictConfig, part: HDMAPData, val_scores: np.ndarray, refs, calibrated: dict) -> dict:
    """One scored part's metrics: the HDMAP protocols, gate accuracy (gated runs), the realised rates at the
    false-alarm points (far_/tpr_/acc_<point>), n_scored."""
    meta = part.meta
    metrics = evaluate_hdmap(part, val_scores, cfg.eval.val_percentile)
    if refs:
        metrics.update(refs.metrics(meta))
    fault, cold = meta["label"].to_numpy() == 1, meta["condition"].to_numpy() == "cold"
    groups = condition_groups(meta, condition_from(cfg, refs))
    metrics.update(calibration.rate_metrics(calibrated, meta["score"].to_numpy(), fault, cold, groups))
    if cfg.eval.bootstrap:
        metrics.update(run_intervals(meta, n=cfg.eval.bootstrap, seed=cfg.seed))
    return {**metrics, "n_scored": float(len(part))}


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
        "split": "the study part of the row: dev | test (eval.split; every row is test under whole_test)",
    }
    path.write_text(json.dumps(info, indent=2))
