#!/usr/bin/env bash
# Create .venv with the CPU torch wheel (pinned so pip never resolves CUDA wheels), then install the package.
# Idempotent: a finished environment is reused. In an NGC container, install with `pip install -e .` instead.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp=.venv/.megatron_anchor_ready
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==2.13.0" numpy
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
