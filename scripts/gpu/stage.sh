#!/usr/bin/env bash
# Stage what scripts/gpu/job.sh needs on the GPU runner: CIFAR-10 and the wheels of ../shared/gpu
# (through ../shared/gpu/stage.sh), plus the safetensors wheel that the runner lacks. Run from the
# repository root; the parts land in .gpu/part-K (ignored by git), each copied on the runner with
#   mkdir -p /root/gpu && cp -r .gpu/part-K/. /root/gpu/
set -euo pipefail
../shared/gpu/stage.sh cifar10 wheels
last=$(ls -d .gpu/part-* | sort -V | tail -1)
mkdir -p "$last/wheels"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  -d "$last/wheels" safetensors==0.8.0
du -sh .gpu/part-*
