"""feclip entry point: compose the Hydra config (conf/) and run one job.

python run.py                                   # one job on the embedded default
python run.py -m domain=A,B,C,D freq=dct,fft    # a sweep: one MLflow run per job under one parent run
"""

import sys

import hydra
from omegaconf import DictConfig

from feclip.errors import FeclipError
from feclip.jobs.run import main


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def entry(cfg: DictConfig) -> float | None:
    try:
        return main(cfg)
    except FeclipError as error:
        print(f"feclip: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    entry()
