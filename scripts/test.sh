#!/usr/bin/env bash
# Run the test suite (CPU only; tiny random LLaVA checkpoints built offline). Sets itself up first.
#   bash scripts/test.sh [pytest args]            # everything, on both transformers profiles:
#                                                 #   4.37.2 (LLaVA's pin, .venv) and 4.57.x (.venv-457)
#   bash scripts/test.sh --fast [pytest args]     # the fast lane: unit tests + one end-to-end AVC test,
#                                                 #   on the 4.37 profile only (under 2 minutes on 2 cores)
#   PROFILES=4.57 bash scripts/test.sh [args]     # one profile
set -euo pipefail
cd "$(dirname "$0")/.."
marker=()
if [ "${1:-}" = "--fast" ]; then
  shift
  profiles=${PROFILES:-4.37}
  marker=(-m "not slow")
else
  profiles=${PROFILES:-"4.37 4.57"}
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

python_of() { if [ "$1" = 4.37 ]; then echo .venv/bin/python; else echo ".venv-${1//./}/bin/python"; fi; }
for profile in $profiles; do bash scripts/install.sh --profile "$profile"; done
# Each profile's run compares its greedy tokens with the other profile's (tests/test_profiles.py).
for profile in $profiles; do
  other=$profile
  for candidate in $profiles; do [ "$candidate" = "$profile" ] || other=$candidate; done
  echo "== transformers profile $profile ==" >&2
  LLAVA_AVC_OTHER_PYTHON="$(python_of "$other")" "$(python_of "$profile")" -m pytest -q "${marker[@]+"${marker[@]}"}" "$@" ${PYTEST_ARGS:-}
done
