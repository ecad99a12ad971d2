"""`pip install .` (not editable) into a fresh virtual environment, then `feclip` from another folder: the
configs travel with the package, the console command runs the smoke job, and the version is the package's.

The fresh environment sees this interpreter's site-packages through a .pth line (torch, mlflow, hydra: the
dependencies, not reinstalled); feclip itself is built from a copy of the source and installed into it."""

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from helpers import ROOT, small_data

import feclip

BUILD_FILES = ("pyproject.toml", "README.md")  # what the build reads besides the package


def call(*command, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv with feclip installed from a copy of this checkout (no editable link to it)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "src"
    shutil.copytree(ROOT / "feclip", source / "feclip", ignore=shutil.ignore_patterns("__pycache__"))
    for name in BUILD_FILES:
        shutil.copy(ROOT / name, source / name)
    call(sys.executable, "-m", "venv", "--without-pip", tmp / "venv", cwd=tmp)
    purelib = sysconfig.get_path("purelib", vars={"base": str(tmp / "venv"), "platbase": str(tmp / "venv")})
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    pip = ("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--quiet")
    call(tmp / "venv/bin/python", *pip, source, cwd=tmp)
    return tmp / "venv"


def test_the_installed_package_carries_its_configs(venv, tmp_path):
    where = call(venv / "bin/python", "-c", "import feclip; print(feclip.CONF_DIR)", cwd=tmp_path).stdout
    conf = Path(where.strip())
    assert conf.is_relative_to(venv) and (conf / "config.yaml").is_file()
    packaged = sorted(p.relative_to(conf) for p in conf.rglob("*.yaml"))
    assert packaged == sorted(p.relative_to(feclip.CONF_DIR) for p in feclip.CONF_DIR.rglob("*.yaml"))
    assert call(venv / "bin/feclip", "--version", cwd=tmp_path).stdout == f"feclip {feclip.__version__}\n"


def test_feclip_run_experiment_smoke_from_another_folder(venv, tmp_path):
    """The smoke preset on a smaller synthetic set (the same pipeline, fewer images), from an empty folder."""
    uri = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    done = call(venv / "bin/feclip", "run", "experiment=smoke", *small_data(tmp_path), uri, cwd=tmp_path)
    assert "feclip job C-feclip·dct: FINISHED" in done.stdout, done.stdout
    (job,) = (tmp_path / "outputs").glob("*/*")
    assert {"run.json", "metrics.json", "checkpoint", "feclip.log"} <= {p.name for p in job.iterdir()}
