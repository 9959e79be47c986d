#!/usr/bin/env bash
# Run the test suite (CPU only; tiny random LLaVA checkpoints built offline) on both supported
# transformers profiles: 4.37.2 (LLaVA's pin, .venv) and 4.57.x (.venv-457). Sets itself up first.
#   bash scripts/test.sh [pytest args]            # both profiles
#   PROFILES=4.37 bash scripts/test.sh [args]     # one profile
set -euo pipefail
cd "$(dirname "$0")/.."
profiles=${PROFILES:-"4.37 4.57"}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

python_of() { if [ "$1" = 4.37 ]; then echo .venv/bin/python; else echo ".venv-${1//./}/bin/python"; fi; }
for profile in $profiles; do bash scripts/install.sh --profile "$profile"; done
# Each profile's run compares its greedy tokens with the other profile's (tests/test_profiles.py).
for profile in $profiles; do
  other=$profile
  for candidate in $profiles; do [ "$candidate" = "$profile" ] || other=$candidate; done
  echo "== transformers profile $profile ==" >&2
  LLAVA_AVC_OTHER_PYTHON="$(python_of "$other")" "$(python_of "$profile")" -m pytest -q "$@" ${PYTEST_ARGS:-}
done
