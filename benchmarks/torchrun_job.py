"""Run a benchmark script's worker under torchrun on this machine; shared by the scripts beside it.

Imported by ``memory.py`` and ``train.py`` (``from torchrun_job import run_worker``); the package never
imports it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from megatron_anchor.parallel import free_port  # noqa: E402


def run_worker(script: str, worker_argv: list[str], nproc: int, **env: str) -> None:
    """``torchrun --nproc-per-node nproc script *worker_argv`` on loopback; RuntimeError with its stderr."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()), script, *worker_argv,
    ]  # fmt: skip
    environ = dict(os.environ, PYTHONPATH=str(REPO), PYTHONWARNINGS="ignore", **env)
    proc = subprocess.run(cmd, env=environ, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark job failed: {' '.join(cmd)}\n{proc.stderr[-4000:]}")
