#!/usr/bin/env bash
# Download, where the package index is reachable, the wheels that benchmarks/gpu_check.py's training step needs
# on a bare GPU machine without network (Python 3.12, torch there; megatron-core missing) into .whl/ (ignored by
# git, ~3 MB). Copy .whl/ along with the checkout: gpu_check installs it into /tmp when megatron-core is missing.
# Another Python: PYTHON_VERSION=3.11 bash scripts/gpu_wheels.sh. More packages: bash scripts/gpu_wheels.sh NAME==V
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
rm -rf .whl && mkdir -p .whl
# --no-deps: megatron-core 0.16.1 needs only torch, numpy and packaging, which the machine has, and einops for
# its hierarchical CP groups (--cp-comm-type a2a+p2p), which it does not declare.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "megatron-core==0.16.1" "einops==0.8.2" "$@"
size=$(du -sm .whl | cut -f1)
ls .whl
if [ "$size" -ge 64 ]; then
  echo "error: .whl/ holds ${size} MiB, over the 64 MiB that travel with a checkout" >&2
  exit 1
fi
echo "wheels for Python ${PYTHON_VERSION} in .whl/ (${size} MiB)"
