"""A stand-in for run.py in the search tests: the project's config, the real job record (`tracked_job`:
run.json, metrics.json) and sweep callback, but a job body that trains nothing. Its metrics are set by
model.lam and train.lr so that the dev part's optimum (lam 0.2) and the test part's (lam 0.8) differ on
purpose; the job of lam 0.5 with lr 0.002 fails.

    python tests/search/toy_app.py -m search=smoke 'model.lam=choice(0.2,0.5,0.8)' \\
        'train.lr=choice(0.001,0.002)'
"""

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from feclip import CONF_DIR, cli
from feclip.errors import FeclipError
from feclip.jobs.common import tracked_job
from feclip.methods.registry import job_reads
from feclip.tracking import JobInfo
from feclip.tracking.sweep import sweep_exit_code


def body(cfg: DictConfig, folder: Path, record) -> dict[str, float]:
    """dev/acc_fa1_cold peaks at lam 0.2 (lower lr better), acc_fa1_cold at lam 0.8; scored parts only."""
    lam, lr = float(cfg.model.lam), float(cfg.train.lr)
    if (lam, lr) == (0.5, 0.002):
        raise FeclipError("toy failure: lam 0.5 with lr 0.002")
    metrics = {"dev/acc_fa1_cold": 1 - (lam - 0.2) ** 2 - lr}
    if "test" in cfg.eval.split.score:
        metrics["acc_fa1_cold"] = 1 - (lam - 0.8) ** 2
    return metrics


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def entry(cfg: DictConfig) -> float | None:
    folder = Path(HydraConfig.get().runtime.output_dir)
    try:
        job = JobInfo.from_hydra(cfg, reads=job_reads(cfg))
        return tracked_job(cfg, folder, job, body).get("dev/acc_fa1_cold")
    except FeclipError as error:
        cli.report(error, "toy")  # a failed job of a sweep: the others go on (as run.py)
    return None


def run() -> int:
    entry()
    return sweep_exit_code()


if __name__ == "__main__":
    raise SystemExit(cli.guard(run, "toy"))
