#!/usr/bin/env bash
# Set up .venv and run the CP=2 anchor-attention demo on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m torch.distributed.run --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29511 \
  benchmarks/cp_demo.py
