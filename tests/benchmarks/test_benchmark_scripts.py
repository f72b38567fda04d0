"""The benchmark scripts that double as checks run end to end on the CPU: ``gpu_check.py --cpu-smoke`` (the
one-command GPU check cannot rot on machines without a GPU) and ``cp_demo.py`` (the CP=2 self-check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_the_cpu(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--repeat", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert max(results["exactness"]["sdpa_cpu"].values()) <= 2e-2  # bf16, three modes, against fp64
    assert set(results["speed"]["1024"]) == {"anchor", "causal", "sdpa_causal"}
    assert results["training_step"]["tokens_per_s"] > 0 and "error" not in results["training_step"]
    assert "exact sdpa_cpu: worst rel. error" in proc.stdout and "training step:" in proc.stdout


def test_cp_demo_matches_dense_attention_on_two_ranks():
    """``benchmarks/cp_demo.py`` (the README's CP=2 self-check) runs under torchrun and passes its check."""
    from megatron_anchor.parallel import free_port

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "benchmarks/cp_demo.py"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "matches dense fp64 attention" in proc.stdout and "kernel calls" in proc.stdout
