#!/usr/bin/env bash
# The one prepared script for a lent GPU (see docs/benchmarks.md, "GPU recipe").
#   locally, once:   bash ../shared/gpu/fetch_wheels.sh protobuf (wheels into .whl/, ignored by git)
#   device tool:     command "bash scripts/gpu_check.sh", carry [".whl"], timeout_s 600
# Installs the carried wheels, then measures the 7B-shape speed targets (fp16, nf4; batch 1, 8;
# 64 new tokens) and the nf4 memory target (batch 1, 256 new tokens). Everything is tee'd to $OUT,
# JSON rows as they are measured, so a run cut short still returns what it finished.
set -uo pipefail
out=${OUT:-.cache/gpu-check}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "gpu_check: carry .whl (bash ../shared/gpu/fetch_wheels.sh protobuf)" >&2; exit 1; }
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -m llava_avc.doctor | tee "$out/doctor.txt"
python3 scripts/bench_decode.py --preset 7b-shape --device cuda --dtypes fp16,nf4 --batches 1,8 --new-tokens 64 \
  --runs 3 --warmup 1 --time-budget 300 --json "$out/bench-7b-64.json" 2>&1 | tee "$out/bench-7b-64.log"
python3 scripts/bench_decode.py --preset 7b-shape --device cuda --dtypes nf4 --batches 1 --new-tokens 256 \
  --methods plain,lean,avc --runs 3 --warmup 1 --json "$out/bench-7b-256.json" 2>&1 | tee "$out/bench-7b-256.log"
