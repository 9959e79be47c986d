#!/usr/bin/env bash
# Wheels for a lent GPU machine (Python 3.12, torch + CUDA, transformers 5.x; no llava, no
# bitsandbytes, no network) into .whl/ (ignored by git), for scripts/gpu_check.sh.
#   bash scripts/fetch_gpu_wheels.sh          (needs ../shared/gpu/fetch_wheels.sh and PyPI)
# On top of the shared set: what scripts/gpu_check.sh imports there (pytest and its dependencies,
# requests for transformers 4.37, protobuf for the tokenizer), and huggingface_hub at the 4.37
# profile's pin instead of 0.20.3, with which peft 0.13.2 fails to import (huggingface_hub.errors).
set -euo pipefail
cd "$(dirname "$0")/.."
shared=../shared/gpu/fetch_wheels.sh
[ -f "$shared" ] || { echo "fetch_gpu_wheels: $shared not found (the team's shared folder beside the repository)" >&2; exit 1; }
rm -rf .whl
bash "$shared" protobuf pytest pluggy iniconfig pygments requests urllib3 idna certifi charset_normalizer
hub=$(grep -E '^huggingface_hub==' requirements/pins-4.37.txt)
rm -f .whl/huggingface_hub-*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp -d .whl "$hub"
du -sh .whl && ls .whl
