#!/usr/bin/env bash
# Wheels for the lent H200 (device tool): what its image lacks (scripts/gpu_wheels.txt), for CPython 3.12 on
# x86-64, into .whl/ (git-ignored, 36 MB on 2026-12-02; the device's working-tree limit is 64 MiB). Run here, where PyPI is
# reachable, then on the device: run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
rm -rf .whl && mkdir .whl
# hydra-core 1.3 needs antlr4-python3-runtime 4.9.x, published as a source archive only: built here (pure Python)
"$PY" -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    platforms+=(--platform "$p")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl -r scripts/gpu_wheels.txt
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
