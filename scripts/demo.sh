#!/usr/bin/env bash
# The main job: answer a question about a real photo with AVC, through the real LLaVA code.
#
#   bash scripts/demo.sh                                   # offline tiny random checkpoint (nonsense words)
#   bash scripts/demo.sh --model-path liuhaotian/llava-v1.5-7b   # real weights (your machine downloads them)
#   bash scripts/demo.sh --image my.jpg --query "Is there a dog?" --method vcd
#
# Sets itself up on a fresh machine (.venv, dependencies) first. Extra arguments go to `llava-avc ask`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh

args=("$@")
has() { local flag=$1; shift; for a in "${args[@]+"${args[@]}"}"; do [ "$a" = "$flag" ] && return 0; done; return 1; }

if ! has --model-path; then
  # No weights given: build (once) a tiny random LLaVA-1.5-format checkpoint, fully offline.
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  checkpoint=.cache/llava-tiny-demo
  if [ ! -f "$checkpoint/config.json" ]; then
    .venv/bin/python scripts/make_tiny_llava.py --out "$checkpoint" --preset tiny --seed 0 --force >/dev/null
  fi
  args+=(--model-path "$checkpoint")
  echo "demo: tiny checkpoint with RANDOM weights: the answer is nonsense words by design." >&2
fi
if ! has --image; then
  args+=(--image "$(.venv/bin/python -c 'import matplotlib.cbook as c; print(c.get_sample_data("grace_hopper.jpg", asfileobj=False))')")
fi
if ! has --query; then
  args+=(--query "What is the person in the image wearing?")
fi
if ! has --heatmap; then
  mkdir -p .cache
  args+=(--heatmap .cache/demo-blind-tokens.png)
fi
exec .venv/bin/llava-avc ask "${args[@]}"
