#!/usr/bin/env bash
# GPU check of a study (experiments/004_performance): the CUDA tests; the paper-setting benchmark; the study
# rehearsal of scripts/gpu_check.py (FE-CLIP ViT-L/14-336, PatchCore DINOv2 ViT-S/14 at 518, WinCLIP+
# ViT-B-16-plus-240, gated CPD-PatchCore, each in fp32 and bf16, predict with every checkpoint, the precision
# policy's agreement); a smoke sweep.
#   bash scripts/gpu_check.sh            # a fresh CUDA machine, README install; < 8 min on one H100
#   bash scripts/gpu_check.sh --cpu      # the same steps on the CPU with the tiny backbones (the test suite)
# Installs what it needs (the carried .whl/ wheels, else pip install -e '.[dev]'); exits non-zero on the first
# failing step; prints one summary block and, on a GPU, writes it to experiments/004_performance/.
set -euo pipefail

cd "$(dirname "$0")/.."
CPU=0
if [ "${1:-}" = "--cpu" ]; then CPU=1; elif [ -n "${1:-}" ]; then echo "gpu_check.sh: unknown argument $1; expected --cpu or nothing" >&2; exit 2; fi
PY="${PYTHON:-$(command -v python3 || command -v python)}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"  # weights from the local cache only (a lent device reaches no network)
STAMP="$(date +%Y-%m-%d_%H%M%S)"
LOG_DIR="${GPU_CHECK_LOG_DIR:-$(mktemp -d -t feclip_gpu_check.XXXXXX)}"  # logs, jobs, data, the store
mkdir -p "$LOG_DIR"
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
        if [ -f "${LOG_DIR}/study.log" ]; then echo "--- study"; sed -n '/^## study check/,$p' "${LOG_DIR}/study.log"; fi
        if [ -f "${LOG_DIR}/sweep.log" ]; then echo "--- smoke sweep"; tail -n 5 "${LOG_DIR}/sweep.log"; fi
        echo "===== end ====="
    )"
    echo
    echo "$block"
    local out=experiments/004_performance
    if [ "$CPU" -eq 0 ] && [ -d "$out" ] && [ -w "$out" ]; then
        echo "$block" > "${out}/gpu_check_${STAMP}.txt" && echo "(written to ${out}/gpu_check_${STAMP}.txt)"
    fi
}

# 0) what the machine lacks: the lent device's image gets the carried wheels of scripts/gpu_wheels.sh (.whl/),
#    a machine installed as the README says (.[sweep]) gets the test tools: pip install -e '.[dev]'
if ! "$PY" -c 'import mlflow, open_clip, hydra, omegaconf, pytest' 2>/dev/null; then
    if [ -d .whl ]; then
        step wheels 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "${LOG_DIR}/site" .whl/*.whl
        export PYTHONPATH="${LOG_DIR}/site${PYTHONPATH:+:${PYTHONPATH}}"
    else
        step install 600 "$PY" -m pip install -q -e '.[dev,sweep]'
    fi
fi

if [ "$CPU" -eq 1 ]; then
    DEVICE=cpu BENCH=(--device cpu --precision fp32 --backbone tiny --batch 2 --repeats 1 --patchcore
        --patchcore-train 4 --cache 8 --skip lfs,taps,train)
    STUDY=(--device cpu --tiny) DOMAINS=A
else
    DEVICE=cuda BENCH=(--device cuda --precision bf16 --backbone vit_l14_336 --image-size 336 --batch 32
        --repeats 5 --weights auto --patchcore --cache 512)
    STUDY=(--device cuda) DOMAINS=A,C
fi

# 1) the tests marked cuda (every method's bf16 agreement, predict with banks and gates on the GPU; skipped
#    without a GPU: the --cpu run checks that they collect), from the files that mark any
mapfile -t CUDA_TESTS < <(grep -rl --include='test_*.py' 'mark\.cuda' tests)
step pytest 180 "$PY" -m pytest -q -m cuda -p no:cacheprovider -n 0 "${CUDA_TESTS[@]}"

# 2) the paper setting: ViT-L/14 at 336, batch 32, bf16 (the OpenAI weights when cached, else random init:
#    the bench prints which; weights do not change timing); the token cache of 512 images (host RAM while filling)
step bench 300 "$PY" scripts/bench.py "${BENCH[@]}" --json "${LOG_DIR}/bench.json"

# 3) the study rehearsal: every method at realistic size in fp32 and bf16, predict, the policy's agreement
step study 300 "$PY" scripts/gpu_check.py "${STUDY[@]}" --out "${LOG_DIR}/study"

# 4) a smoke sweep (feclip/conf/experiment/smoke.yaml: 1 epoch, few images) through Hydra's multirun and MLflow
step sweep 240 "$PY" run.py -m experiment=smoke "device=${DEVICE}" "domain=${DOMAINS}" \
    tracking.experiment=gpu_check "tracking.uri=sqlite:///${LOG_DIR}/mlflow.db" "hydra.sweep.dir=${LOG_DIR}/multirun" \
    "data.root=${LOG_DIR}/hdmap_smoke" "cache_dir=${LOG_DIR}/cache"

finish "OK"
