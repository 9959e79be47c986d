#!/usr/bin/env bash
# Wheels for a lent GPU machine (Python 3.12, torch + CUDA 13, transformers 5.x; no llava, no
# bitsandbytes, no network) into .whl/ (ignored by git), for scripts/gpu_check.sh (docs/benchmarks.md).
#   bash scripts/fetch_gpu_wheels.sh          (needs PyPI; about 19 MB)
# The set: LLaVA 1.2.2 and the transformers 4.37 stack it runs on (huggingface_hub at the 4.37
# profile's pin: with 0.20.3 peft 0.13.2 fails to import huggingface_hub.errors), bitsandbytes cut
# down to its CPU and CUDA 13.0 libraries (so the carry stays under the device tool's 64 MiB), and
# what gpu_check.sh imports there: pytest and its dependencies, requests (transformers 4.37 needs it),
# protobuf (the tokenizer).
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf .whl && mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
hub=$(grep -E '^huggingface_hub==' requirements/pins-4.37.txt)
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d .whl \
  transformers==4.37.2 tokenizers==0.15.2 "$hub" accelerate==0.27.2 llava-torch==1.2.2.post1 \
  bitsandbytes==0.50.2 peft==0.13.2 shortuuid==1.0.13 \
  protobuf pytest pluggy iniconfig pygments requests urllib3 idna certifi charset_normalizer
unpacked=$(mktemp -d)
python3 -m pip install -q wheel
python3 -m wheel unpack -d "$unpacked" .whl/bitsandbytes-*.whl
find "$unpacked" -name 'libbitsandbytes_*.so' ! -name '*_cpu.so' ! -name '*_cuda130.so' -delete
rm .whl/bitsandbytes-*.whl
python3 -m wheel pack -d .whl "$unpacked"/bitsandbytes-*
rm -rf "$unpacked"
du -sh .whl && ls .whl
