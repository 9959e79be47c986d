#!/usr/bin/env bash
# Idempotent set-up of llava-avc (and, for the original-LLaVA profiles, the real LLaVA codebase).
#
#   bash scripts/install.sh                    # into ./.venv (created if missing)
#   bash scripts/install.sh --profile 4.57     # the newest-4.x profile, into ./.venv-457
#   bash scripts/install.sh --profile hf       # llava-hf on transformers 5, NO llava, into ./.venv-hf
#   bash scripts/install.sh --profile hf-vision # the hf profile plus torchvision (every family's AutoProcessor), .venv-hf-vision
#   bash scripts/install.sh --profile lmms     # hf-vision plus lmms-eval (`--model llava_hf_avc`), .venv-lmms
#   bash scripts/install.sh --profile lmms-457 # the 4.57 profile plus lmms-eval (`--model llava_avc`), .venv-lmms-457
#   bash scripts/install.sh --profile newest   # llava-hf on whatever transformers pip serves NOW (unpinned,
#                                              #   re-resolved on every run), NO llava, into ./.venv-newest
#   bash scripts/install.sh --python PYTHON    # into an existing environment (its python)
#
# Profiles (requirements/pins-<profile>.txt): 4.37 = transformers 4.37.2, LLaVA's own pin (default);
# 4.57 = transformers 4.57.x, which LLaVA 1.2.2 runs on only through llava-avc's patch (the llava-hf
# backend runs there too); hf = transformers 5.x with the llava-hf backend only; newest = the hf profile
# without pins, to catch the next transformers release before users do (`bash scripts/test.sh --newest`);
# hf-vision = the hf profile with a torchvision that imports beside its torch (Qwen's and OneVision's processors
# need it), for the families' tests with their real processors; lmms = the hf-vision profile with lmms-eval 0.7.3 (the `lmms` extra), for tests/test_lmms_eval.py; lmms-457 = the
# 4.57 profile with LLaVA and lmms-eval 0.7.3, for tests/test_lmms_eval_llava.py (lmms-eval needs
# transformers >= 4.39.2, so not beside LLaVA's own pin 4.37.2).
#
# 1. torch: an existing torch >= 2.1 is kept (a user's CUDA build is never replaced); otherwise
#    torch==2.13.0 is installed. hf-vision and lmms: an existing torch + torchvision that import together are kept;
#    otherwise the pair torch==2.14.1 torchvision==0.29.1 is installed (into install.sh's own venv only).
# 2. llava-avc (editable) with the runtime set pinned by requirements/pins-<profile>.txt, plus the
#    extras: 4.37 / 4.57: llava, test, serve (pytest; fastapi, uvicorn, requests for LLaVA's
#    web-demo worker); hf: hf, test.
# 3. LLaVA (not for the hf profile): an importable `llava` (e.g. `pip install -e LLaVA` from a clone) is kept; otherwise
#    llava-torch==1.2.2.post1 is installed with --no-deps (its metadata pins torch 2.1.2, old
#    gradio etc., which would pull gigabytes of CUDA wheels and break the resolve).
# A stamp in the environment skips all of this when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=""
profile=4.37
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python_bin="${2:?--python needs a path}"; shift 2 ;;
    --profile) profile="${2:?--profile needs 4.37, 4.57, hf, hf-vision, lmms, lmms-457 or newest}"; shift 2 ;;
    *) echo "install.sh: unknown argument $1 (use --python PATH, --profile 4.37|4.57|hf|hf-vision|lmms|lmms-457|newest)" >&2
       exit 2 ;;
  esac
done
pins="requirements/pins-$profile.txt"
if [ "$profile" != newest ] && [ ! -f "$pins" ]; then
  echo "install.sh: unknown profile $profile (have: $(ls requirements | sed -n 's/^pins-\(.*\)\.txt$/\1/p' | tr '\n' ' '))" >&2
  exit 2
fi
own_venv=0
if [ -z "$python_bin" ]; then
  own_venv=1
  venv=.venv
  [ "$profile" = 4.37 ] || venv=".venv-${profile//./}"
  if [ ! -x "$venv/bin/python" ]; then
    echo "llava-avc: creating $venv" >&2
    python3 -m venv "$venv"
  fi
  python_bin="$venv/bin/python"
fi

if [ "$profile" = newest ]; then
  # No pins and no stamp: every run asks the index for the newest releases (torch is kept when present).
  "$python_bin" -c 'import torch' 2>/dev/null || "$python_bin" -m pip install --quiet --disable-pip-version-check torch==2.13.0
  echo "llava-avc: installing llava-avc with the newest transformers the index serves" >&2
  "$python_bin" -m pip install --quiet --disable-pip-version-check --upgrade --upgrade-strategy eager -e ".[hf,test]"
  exit 0
fi

prefix=$("$python_bin" -c 'import sys; print(sys.prefix)')
stamp="$prefix/.llava-avc-install-stamp"
digest=$(cat setup.cfg pyproject.toml "$pins" scripts/install.sh | sha256sum | cut -c1-16)
if [ "$profile" = hf ]; then
  extras="hf,test"; needed="llava_avc, torch, transformers"
elif [ "$profile" = hf-vision ]; then
  extras="hf,test"; needed="llava_avc, torch, torchvision, transformers"
elif [ "$profile" = lmms ]; then
  extras="hf,test,lmms"; needed="llava_avc, torch, torchvision, transformers, lmms_eval"
elif [ "$profile" = lmms-457 ]; then
  extras="llava,test,serve,lmms"; needed="llava_avc, llava, torch, transformers, lmms_eval"
else
  extras="llava,test,serve"; needed="llava_avc, llava, torch, transformers"
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ] && "$python_bin" -c "import $needed" 2>/dev/null; then
  exit 0
fi

pip=("$python_bin" -m pip install --quiet --disable-pip-version-check)
has_torch() {
  "$python_bin" - <<'PY' 2>/dev/null
import sys, torch
major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
sys.exit(0 if (major, minor) >= (2, 1) else 1)
PY
}
vision_pair=(torch==2.14.1 torchvision==0.29.1)
if { [ "$profile" = hf-vision ] || [ "$profile" = lmms ]; } && ! "$python_bin" -c 'import torch, torchvision' 2>/dev/null; then
  if has_torch && [ "$own_venv" = 0 ]; then
    echo "install.sh: the $profile profile needs a torchvision that imports beside the torch of $python_bin" \
         "(torch $("$python_bin" -c 'import torch; print(torch.__version__)')); install the matching torchvision" \
         "from the index your torch came from, or drop --python to use ./.venv-$profile" >&2
    exit 2
  fi
  echo "llava-avc: installing ${vision_pair[*]} (a torch and torchvision that import together)" >&2
  "${pip[@]}" "${vision_pair[@]}"
elif has_torch; then
  echo "llava-avc: keeping torch $("$python_bin" -c 'import torch; print(torch.__version__)')" >&2
else
  echo "llava-avc: installing torch==2.13.0" >&2
  "${pip[@]}" torch==2.13.0
fi

echo "llava-avc: installing llava-avc and its runtime set" >&2
"${pip[@]}" -c "$pins" -e ".[$extras]"

if [ "$profile" = lmms ] || [ "$profile" = lmms-457 ]; then
  # Overrides of lmms-eval's own resolve (requirements/pins-lmms*.txt say why): protobuf, and on lmms-457's
  # CPU torch the CUDA torchvision lmms-eval pulls in.
  "${pip[@]}" protobuf==7.36.2
  if ! "$python_bin" -c 'import torchvision' 2>/dev/null; then
    echo "llava-avc: removing torchvision (a CUDA build beside a CPU torch)" >&2
    "$python_bin" -m pip uninstall --quiet --yes torchvision
  fi
fi
if [ "$profile" = hf ] || [ "$profile" = hf-vision ] || [ "$profile" = lmms ]; then
  :  # the llava-hf backend needs no llava
elif "$python_bin" -c 'import llava' 2>/dev/null; then
  echo "llava-avc: keeping LLaVA from $("$python_bin" -c 'import llava, os; print(os.path.dirname(llava.__file__))')" >&2
else
  echo "llava-avc: installing llava-torch==1.2.2.post1 (--no-deps)" >&2
  "${pip[@]}" --no-deps llava-torch==1.2.2.post1
fi

echo "$digest" > "$stamp"
