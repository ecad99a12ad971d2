#!/usr/bin/env bash
# GPU check of FE-CLIP (experiments/004_performance): CUDA tests, the paper-setting benchmark, a smoke sweep.
#   bash scripts/gpu_check.sh            # from anywhere; runs in the repository root, < 8 min on an H200
# Exits non-zero on the first failing step; prints one summary block at the end and writes it to
# experiments/004_performance/gpu_check_<date>.txt when that folder is writable.
set -euo pipefail

cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3 || command -v python)}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # weights from the local cache only (a lent device reaches no network)
STAMP="$(date +%Y-%m-%d_%H%M%S)"
LOG_DIR="$(mktemp -d -t feclip_gpu_check.XXXXXX)"
SUMMARY=()
START=$SECONDS

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to LOG_DIR/NAME.log, record status + time
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS rc=0
    echo "=== ${name}: $*" >&2
    timeout --signal=TERM --kill-after=20 "$limit" "$@" 2>&1 | tee "${LOG_DIR}/${name}.log" || rc=${PIPESTATUS[0]}
    SUMMARY+=("${name}: rc=${rc} ($((SECONDS - t0)) s): $*")
    if [ "$rc" -ne 0 ]; then
        local why=""
        if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then why="; timed out after ${limit} s"; fi
        finish "FAILED at ${name} (rc ${rc}${why})"
        exit "$rc"
    fi
}

finish() {
    local block
    block="$(
        echo "===== FE-CLIP gpu_check ${STAMP}: $1 ====="
        echo "host: $(hostname); total $((SECONDS - START)) s; logs: ${LOG_DIR}"
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: n/a"
        "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1 || true
        git rev-parse --short HEAD 2>/dev/null | sed 's/^/commit: /' || true
        printf '%s\n' "${SUMMARY[@]}"
        if [ -f "${LOG_DIR}/pytest.log" ]; then echo "--- pytest"; tail -n 3 "${LOG_DIR}/pytest.log"; fi
        if [ -f "${LOG_DIR}/bench.log" ]; then
            echo "--- bench (${LOG_DIR}/bench.json)"
            grep -E '^(# |weights:|machine:|## |\| (plain|FE-CLIP|from|mean|abs|energy|dct|fft|bank|feature|greedy|kNN|anomaly|full|[0-9.]+ GB) )' "${LOG_DIR}/bench.log" || true
        fi
        if [ -f "${LOG_DIR}/sweep.log" ]; then echo "--- smoke sweep"; tail -n 5 "${LOG_DIR}/sweep.log"; fi
        echo "===== end ====="
    )"
    echo
    echo "$block"
    local out=experiments/004_performance
    if [ -d "$out" ] && [ -w "$out" ]; then
        echo "$block" > "${out}/gpu_check_${STAMP}.txt" && echo "(written to ${out}/gpu_check_${STAMP}.txt)"
    fi
}

# 0) where the image lacks the project's packages (the lent H200): the wheels of scripts/gpu_wheels.sh, carried
#    as .whl/, installed beside the image's own
if ! "$PY" -c 'import mlflow, open_clip, hydra, omegaconf' 2>/dev/null; then
    if [ ! -d .whl ]; then
        SUMMARY+=("packages: mlflow / open_clip / hydra missing and no .whl/")
        finish "FAILED: packages missing; run bash scripts/gpu_wheels.sh here and carry .whl"
        exit 1
    fi
    step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "${LOG_DIR}/site" .whl/*.whl
    export PYTHONPATH="${LOG_DIR}/site${PYTHONPATH:+:${PYTHONPATH}}"
fi

# 1) the tests marked cuda (tests/conftest.py registers the marker; without a GPU they are skipped)
step pytest 120 "$PY" -m pytest -q -m cuda -p no:cacheprovider

# 2) the paper setting: ViT-L/14 at 336, batch 32, bf16 (the OpenAI weights when cached, else random init:
#    the bench prints which; weights do not change timing); the token cache of 512 images (host RAM while filling)
step bench 300 "$PY" scripts/bench.py --device cuda --precision bf16 --backbone vit_l14_336 --image-size 336 \
    --batch 32 --repeats 5 --weights auto --patchcore --cache 512 --json "${LOG_DIR}/bench.json"

# 3) a smoke sweep on the GPU: conf/experiment/smoke.yaml (1 epoch, few images), two domains
if [ ! -f conf/experiment/smoke.yaml ]; then
    SUMMARY+=("sweep: conf/experiment/smoke.yaml is missing")
    finish "FAILED: conf/experiment/smoke.yaml is missing"
    exit 1
fi
step sweep 240 "$PY" run.py -m experiment=smoke device=cuda domain=A,C tracking.experiment=gpu_check

finish "OK"
