"""scripts/gpu_check.sh --cpu: every step of the GPU check (install check, CUDA tests collected, bench, the
study rehearsal of scripts/gpu_check.py, a smoke sweep) on the tiny backbones: it cannot rot between GPUs."""

import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "scripts" / "gpu_check.sh"


def test_the_gpu_check_runs_end_to_end_on_the_cpu(tmp_path):
    env = {**os.environ, "GPU_CHECK_LOG_DIR": str(tmp_path), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        ["bash", str(SCRIPT), "--cpu"], env=env, capture_output=True, text=True, timeout=420
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    block = done.stdout[done.stdout.index("===== FE-CLIP gpu_check") :]
    assert ": OK =====" in block
    for step in ("pytest: rc=0", "bench: rc=0", "study: rc=0", "sweep: rc=0"):
        assert step in block
    study = block[block.index("## study check") : block.index("--- smoke sweep")].splitlines()[2:]
    names = {"feclip_vitl336", "patchcore_dinov2_518", "winclip_b16plus240", "cpd_patchcore_gated"}
    assert {line.split()[0] for line in study} == names and all(line.endswith(" ok") for line in study)


def test_an_unknown_argument_is_one_line():
    done = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and done.stderr.strip().count("\n") == 0 and "--gpu" in done.stderr


@pytest.mark.parametrize("kind", ["spearman", "distinct", "predict"])
def test_the_study_verdict_names_what_is_out_of_bounds(kind):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("gpu_check", SCRIPT.with_suffix(".py"))
    gpu_check = module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    row = {"spearman": 1.0, "distinct": 1.0, "max_rel": 0.0, "max_sd": 0.0, "predict_fp32_rel": 0.0}
    row["predict_bf16_rel"] = 0.0
    assert gpu_check.verdict(row) == "ok"
    broken = {
        "spearman": {"spearman": 0.3},
        "distinct": {"distinct": 0.1},
        "predict": {"predict_fp32_rel": 1e-3},
    }
    assert kind in gpu_check.verdict({**row, **broken[kind]})
