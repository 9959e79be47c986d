#!/usr/bin/env bash
# Run the test suite (CPU only; tiny random LLaVA checkpoints built offline). Sets itself up first.
#   bash scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/python -m pytest -q "$@"
