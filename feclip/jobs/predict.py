"""mode=predict: apply a saved model (`model.checkpoint`) to a folder or glob of unlabelled TIFFs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from omegaconf import DictConfig

from feclip.errors import FeclipError
from feclip.evaluation.predictor import (
    list_inputs,
    load_predictor,
    overlay_writer,
    predict_files,
    predict_identity,
    summary,
)
from feclip.jobs.common import JobRecord
from feclip.runtime import runtime


class NothingScoredError(FeclipError):
    """Not one input file could be scored."""


def predict_job(cfg: DictConfig, output_dir: Path, record: JobRecord) -> dict[str, float]:
    """Score predict.input with model.checkpoint, write predictions.csv + summary.json (also when nothing
    could be scored, which then ends the job with a one-line error)."""
    identity = predict_identity(cfg)
    rt = replace(runtime(cfg), batch_size=cfg.predict.batch_size, precision=identity["precision"])
    if identity["precision"] != identity["calibrated_precision"]:
        print(
            f"feclip predict: scoring at precision {identity['precision']}, calibrated at "
            f"{identity['calibrated_precision']} (predict.allow_precision_change=true): thresholds may move"
        )
    record.set_tags({"predict.calibrated_precision": identity["calibrated_precision"]})
    weights = cfg.predict.backbone_weights
    predictor = load_predictor(cfg.model.checkpoint, rt.device, weights=weights)
    files = list_inputs(str(cfg.predict.input))
    point = cfg.predict.operating_point or predictor.record["operating_point"]
    out = Path(cfg.predict.out) if cfg.predict.out else output_dir
    out.mkdir(parents=True, exist_ok=True)
    on_flagged = overlay_writer(out / "overlays", files) if cfg.predict.overlays else (lambda *args: None)
    table = predict_files(predictor, files, rt, operating_point=point, on_flagged=on_flagged)
    table.to_csv(out / "predictions.csv", index=False)
    info = summary(table, point)
    (out / "summary.json").write_text(json.dumps(info, indent=2))
    print(
        f"feclip predict: {info['n_flagged']}/{info['n_files']} flagged at {point}, "
        f"{info['n_errors']} errors ({info['n_nonfinite']} non-finite scores), "
        f"{info['n_shape_mismatch']} of another shape; written to {out / 'predictions.csv'}"
    )
    if out != output_dir:
        record.log_artifacts(out)
    if info["n_scored"] == 0:
        raise NothingScoredError(
            f"none of the {info['n_files']} files at {cfg.predict.input} could be scored "
            f"(first errors: {', '.join(info['first_errors'])}); see {out / 'predictions.csv'}"
        )
    return {k: float(v) for k, v in info.items() if k.startswith("n_")}
