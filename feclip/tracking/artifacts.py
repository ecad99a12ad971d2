"""MLflow artifact URIs as inputs: `model.checkpoint=runs:/<run_id>/checkpoint` is downloaded once into the
job folder, so train (adapters from a tracked run) and predict (a tracked model) read a local directory."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from feclip.tracking.uris import TrackingError, fast_http, one_line, resolve_tracking_uri

RUNS_SCHEME = "runs:/"


def download_checkpoint(uri: str, tracking_uri: str, into: Path) -> Path:
    """The local copy of `runs:/<run_id>/<path>` under `into` (a one-line TrackingError when unavailable)."""
    from mlflow.artifacts import download_artifacts

    into.mkdir(parents=True, exist_ok=True)
    try:
        with fast_http(10):
            return Path(download_artifacts(artifact_uri=uri, dst_path=str(into), tracking_uri=tracking_uri))
    except Exception as error:  # mlflow raises many types for a missing run or path
        raise TrackingError(
            f"model.checkpoint={uri} cannot be downloaded from {tracking_uri} ({one_line(error, 160)}); "
            "expected runs:/<run_id>/checkpoint of a run in that store"
        ) from None


def with_local_checkpoint(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """`cfg` with a `runs:/` model.checkpoint replaced by its downloaded copy (other values unchanged)."""
    checkpoint = OmegaConf.select(cfg, "model.checkpoint", default=None)
    if not checkpoint or not str(checkpoint).startswith(RUNS_SCHEME):
        return cfg
    local = download_checkpoint(
        str(checkpoint), resolve_tracking_uri(cfg.tracking.uri), output_dir / "input_model"
    )
    resolved = cfg.copy()
    resolved.model.checkpoint = str(local)
    return resolved
