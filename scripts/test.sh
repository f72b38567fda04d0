#!/usr/bin/env bash
# Set up .venv if needed, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/ruff check megatron_anchor tools tests benchmarks examples
.venv/bin/python -m pytest -q tests "$@"
