"""feclip entry point: compose the Hydra config (conf/) and run one job.

python run.py                                   # one job on the embedded default
python run.py -m domain=A,B,C,D freq=dct,fft    # a sweep: one MLflow run per job under one parent run

A bad input stops a single job with one line (exit 2; 3 for a path the system refuses: disk full, not
writable); SIGINT / SIGTERM end it KILLED with one line (exit 130 / 143): `feclip.cli`. In a sweep a failing
job is marked FAILED (its folder and run say why) and the sweep goes on; the process exits 1 when any job
failed or never started.
"""

import traceback

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from feclip import cli


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def entry(cfg: DictConfig) -> float | None:
    # imported here, after Hydra composed the config: torch, open_clip and mlflow take seconds to import, and
    # a mistyped override (freq=fftt, model.lamda=...) is reported before any of that
    from feclip.jobs.run import main

    sweep = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return main(cfg)
    except Exception as error:
        code = cli.report(error, "feclip")
        if code is None and not sweep:
            raise  # a bug: its traceback
        if code is None:
            traceback.print_exc()  # a bug in one job: the others still run
        elif not sweep:
            raise SystemExit(code) from None
    return None


def run() -> int:
    entry()
    from feclip.tracking.sweep import sweep_exit_code

    return sweep_exit_code()


STOPPED = "what was written is whole; a started job's run.json says KILLED"

if __name__ == "__main__":
    raise SystemExit(cli.guard(run, "feclip", stopped=STOPPED))
