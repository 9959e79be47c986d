#!/usr/bin/env bash
# Run the test suite (CPU only; tiny random LLaVA checkpoints built offline). Sets itself up first.
#   bash scripts/test.sh [pytest args]            # everything, on the six profiles: 4.37.2 (LLaVA's
#                                                 #   pin, .venv), 4.57.x (.venv-457; both backends),
#                                                 #   hf (transformers 5.x, llava-hf only, no llava; .venv-hf)
#                                                 #   hf-vision (hf + torchvision: the families' tests with their
#                                                 #   real AutoProcessors, tests/test_famil*.py only),
#                                                 #   lmms (hf + lmms-eval: tests/test_lmms_eval.py only) and
#                                                 #   lmms-457 (4.57 + LLaVA + lmms-eval: tests/test_lmms_eval_llava.py)
#   bash scripts/test.sh --fast [pytest args]     # the fast lane: unit tests + one end-to-end AVC test,
#                                                 #   on the 4.37 profile only (under 2 minutes on 2 cores)
#   bash scripts/test.sh --newest [pytest args]   # the llava-hf suite on the newest transformers pip serves NOW
#                                                 #   (.venv-newest, unpinned): run it when transformers releases,
#                                                 #   before moving requirements/pins-hf.txt to that release
#   PROFILES=4.57 bash scripts/test.sh [args]     # one profile
#   TEST_WORKERS=4 bash scripts/test.sh            # pytest workers of the full run (default 2; 0 = none)
set -euo pipefail
cd "$(dirname "$0")/.."
pytest_options=()
if [ "${1:-}" = "--fast" ]; then
  shift
  profiles=${PROFILES:-4.37}
  pytest_options=(-m "not slow")
elif [ "${1:-}" = "--newest" ]; then
  shift
  profiles=newest
  pytest_options=(-n "${TEST_WORKERS:-2}")
else
  profiles=${PROFILES:-"4.37 4.57 hf hf-vision lmms lmms-457"}
  # Two pytest workers (pytest-xdist): most tests wait on a subprocess's imports, so two overlap well on
  # two cores. TEST_WORKERS=0 runs in one process.
  pytest_options=(-n "${TEST_WORKERS:-2}")
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

python_of() { if [ "$1" = 4.37 ]; then echo .venv/bin/python; else echo ".venv-${1//./}/bin/python"; fi; }
for profile in $profiles; do bash scripts/install.sh --profile "$profile"; done
if [ "$profiles" = newest ]; then
  .venv-newest/bin/python - <<'PY' >&2
import transformers
from llava_avc.backends.versions import NEWEST_TESTED, is_newer_than_tested
found = transformers.__version__
print(f"== the llava-hf suite on transformers {found}, the newest release the index serves "
      f"({'NEWER than' if is_newer_than_tested(found) else 'not newer than'} the newest tested, {NEWEST_TESTED}) ==")
if is_newer_than_tested(found):
    print(f"   when it passes: pin it in requirements/pins-hf.txt and llava_avc/backends/versions.py "
          f"(TESTED_TRANSFORMERS), then run the pinned profiles")
PY
fi
# The two original-LLaVA profiles compare their greedy tokens with each other (tests/test_profiles.py).
for profile in $profiles; do
  other=$profile
  for candidate in $profiles; do
    case "$candidate" in "$profile" | hf* | lmms*) ;; *) other=$candidate ;; esac
  done
  echo "== transformers profile $profile ==" >&2
  # The 4.57 profile compares the original backend with transformers 5 on converted weights
  # (tests/test_cross_backend.py) when the hf profile is installed.
  hf_python=""
  [ ! -x "$(python_of hf)" ] || hf_python="$(python_of hf)"
  other_python=""
  [ "$other" = "$profile" ] || other_python="$(python_of "$other")"
  selection=()  # hf-vision and the lmms profiles run their own tests only (the rest is the hf and 4.57 profiles')
  if [ $# -eq 0 ] && [ "$profile" = hf-vision ]; then selection=(tests/test_families.py tests/test_family_processors.py); fi
  if [ $# -eq 0 ] && [ "$profile" = lmms ]; then selection=(tests/test_lmms_eval.py); fi
  if [ $# -eq 0 ] && [ "$profile" = lmms-457 ]; then selection=(tests/test_lmms_eval_llava.py); fi
  LLAVA_AVC_OTHER_PYTHON="$other_python" LLAVA_AVC_HF_PYTHON="$hf_python" \
    "$(python_of "$profile")" -m pytest -q "${pytest_options[@]+"${pytest_options[@]}"}" "${selection[@]+"${selection[@]}"}" \
    "$@" ${PYTEST_ARGS:-}
done
