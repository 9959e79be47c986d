#!/usr/bin/env bash
# The one prepared script for a lent GPU (docs/benchmarks.md, "GPU recipe").
#   bash scripts/gpu_check.sh [PRESET [DEVICE]]      PRESET 7b-shape (default) or tiny; DEVICE cuda (default) or cpu
#
#   locally, once:  bash scripts/fetch_gpu_wheels.sh                            (wheels into .whl/, ~19 MB)
#   dry run here:   PYTHON=.venv/bin/python bash scripts/gpu_check.sh tiny cpu   (the same steps, tiny;
#                   WHEELS=DIR PYTHON=... installs a cp311 copy of the wheel set over another environment)
#   device tool:    command "bash scripts/gpu_check.sh", carry [".whl"], timeout_s 600 (it plans ~9 min)
#
# Steps, the targets' measurements first; each step's log and JSON rows go to $OUT as they are
# made (rows after every measurement), so a run cut short still returns what it finished:
#   1. install the carried wheels into /tmp/site (when .whl/ exists), GPU name, `llava-avc doctor`
#   2. the CUDA tests (`pytest -m gpu`: fp16 / 4-bit / 8-bit loading, AVC / VCD / M3ID on the GPU)
#   3. batch 1, 64 new tokens, all six methods, median of 5: decode, end-to-end and prefill targets
#   4. nf4, batch 1, 256 new tokens, plain / lean / avc, one run: the peak-memory target
#   5. batch 8, 64 new tokens, plain / lean / avc, median of 5 (reported), cut off at 540 s
#   6. all rows in one table with the ratios, and each target's verdict ($OUT/report.md)
# GPU_CHECK_RUNS / GPU_CHECK_TOKENS / GPU_CHECK_LONG_TOKENS (default 5 / 64 / 256) shrink the grid for
# the smoke test that keeps this script working (tests/test_gpu_check_script.py).
set -uo pipefail
cd "$(dirname "$0")/.."
preset=${1:-7b-shape}
device=${2:-cuda}
case "$preset" in tiny|7b-shape) ;; *) echo "gpu_check: PRESET must be tiny or 7b-shape, got '$preset'" >&2; exit 2;; esac
case "$device" in cuda|cpu) ;; *) echo "gpu_check: DEVICE must be cuda or cpu, got '$device'" >&2; exit 2;; esac
python=${PYTHON:-python3}
out=${OUT:-.cache/gpu-check-$preset-$device}
mkdir -p "$out"
if [ "$device" = cuda ]; then dtypes=fp16,nf4; else dtypes=fp32,nf4; fi
runs=${GPU_CHECK_RUNS:-5}
tokens=${GPU_CHECK_TOKENS:-64}
long_tokens=${GPU_CHECK_LONG_TOKENS:-256}

# the carried wheels: .whl/ on a GPU; WHEELS=DIR for a dry run against a wheel set (a CPU run
# without WHEELS uses the environment of $PYTHON as it is)
if [ -n "${WHEELS:-}" ]; then wheels=$WHEELS; elif [ "$device" = cuda ]; then wheels=.whl; else wheels=; fi
if [ -n "$wheels" ]; then
  [ -d "$wheels" ] || { echo "gpu_check: no $wheels/ here; carry it (bash scripts/fetch_gpu_wheels.sh)" >&2; exit 1; }
  rm -rf /tmp/site
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl \
    || { echo "gpu_check: installing $wheels/ failed" >&2; exit 1; }
  export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
start=$(date +%s)
left() { echo $(( ${1} - ($(date +%s) - start) )); }

step() { echo "== gpu_check: $* ($(date -u +%H:%M:%S), $(( $(date +%s) - start )) s in)" | tee -a "$out/steps.txt"; }

step "1 machine and doctor"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"; } | tee "$out/gpu.txt"
"$python" -m llava_avc doctor 2>&1 | tee "$out/doctor.txt"

step "2 CUDA tests"
timeout 150 "$python" -m pytest -q -m gpu -rs -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -40 | tee "$out/pytest-gpu.txt"

bench() {  # bench NAME SECONDS ARGS...: one bench_decode.py run, ended SECONDS into the script at the latest
  local name=$1 seconds; seconds=$(left "$2"); shift 2
  if [ "$seconds" -lt 10 ]; then echo "gpu_check: no time left for $name" | tee -a "$out/steps.txt"; return; fi
  timeout "$seconds" "$python" scripts/bench_decode.py --preset "$preset" --device "$device" --json "$out/$name.json" "$@" 2>&1 \
    | tee "$out/$name.log"
}
step "3 batch 1, $tokens new tokens, all methods"
bench b1 420 --dtypes "$dtypes" --batches 1 --new-tokens "$tokens" --runs "$runs" --warmup 1 --time-budget "$(left 300)"

step "4 nf4 peak memory, batch 1, $long_tokens new tokens"
bench nf4-b1-long 480 --dtypes nf4 --batches 1 --new-tokens "$long_tokens" --methods plain,lean,avc --runs 1 --warmup 0

step "5 batch 8, $tokens new tokens"
bench b8 540 --dtypes "$dtypes" --batches 8 --new-tokens "$tokens" --methods plain,lean,avc --runs "$runs" --warmup 1 \
  --time-budget "$(left 420)"
step "6 report"
"$python" scripts/bench_decode.py --report "$out" 2>&1 | tee "$out/report.md"
step "done"
