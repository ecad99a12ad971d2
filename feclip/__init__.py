"""feclip: frequency-enhanced CLIP anomaly detection on gearbox HDMAP health maps.

`feclip.api` is the Python interface (compose a config, run a job, load runs, score with a saved model); the
`feclip` command (`feclip.console`) is the command line. `CONF_DIR`: the packaged Hydra configs.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("feclip")
except PackageNotFoundError:  # a source tree on sys.path, not installed
    __version__ = "0+unknown"

CONF_DIR = Path(__file__).resolve().parent / "conf"  # one Hydra group per axis of variation
