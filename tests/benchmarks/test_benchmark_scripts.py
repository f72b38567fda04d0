"""The benchmark scripts that double as checks run end to end on the CPU: ``gpu_check.py --cpu-smoke`` (the
one-command GPU check cannot rot on machines without a GPU) and ``cp_demo.py`` (the CP=2 self-check)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_on_the_cpu(tmp_path):
    """Every step runs; those that must fail are recorded and the next runs: the CUDA kernel on the CPU, a
    step whose process aborts (a kernel's hard crash) and one whose cleanup meets a lost CUDA context."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--cpu-smoke", "--repeat", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = results["steps"]
    names = [n for n in steps if not n.startswith(("exactness", "fault"))]
    assert names == ["packages", "backends", "matmul", "speed 1024", "speed 2048", "training step"]
    assert list(steps)[-6:-3] == ["fault abort", "fault cleanup", "matmul"]
    aborted, lost = steps["fault abort"], steps["fault cleanup"]
    assert not aborted["ok"] and "its process was killed by SIGABRT" in aborted["error"]
    assert not lost["ok"] and "then CUDA context lost" in lost["error"]
    for mode in ("causal", "intra_doc", "anchor"):
        exact = steps[f"exactness sdpa_cpu {mode}"]["result"]
        assert exact["pass"] and max(v for k, v in exact.items() if k != "pass") <= 2e-2  # bf16 vs fp64
        failed = steps[f"exactness flash {mode}"]
        assert not failed["ok"] and "needs CUDA tensors" in failed["error"]
    assert all(steps[n]["ok"] for n in names)
    assert set(steps["speed 1024"]["result"]) == {"anchor", "causal", "kernel_causal", "sdpa_causal"}
    assert steps["training step"]["result"]["tokens_per_s"] > 0
    assert "exactness flash anchor: FAILED: RuntimeError" in results["table"]
    assert "fault abort: FAILED: its process was killed by SIGABRT" in results["table"]
    assert "exactness sdpa_cpu anchor: worst rel. error" in proc.stdout and "training step:" in proc.stdout


def test_gpu_check_says_where_megatron_core_comes_from_on_a_bare_machine(monkeypatch, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    monkeypatch.setattr(gpu_check, "_megatron_core_version", lambda: None)
    monkeypatch.setattr(gpu_check, "WHEELS", tmp_path)
    with pytest.raises(
        RuntimeError, match=f"megatron-core is missing and {tmp_path} holds no wheels: run scripts/"
    ):
        gpu_check.packages(gpu_check.torch.device("cpu"))


def test_gpu_check_says_why_pip_could_not_install_the_wheels(monkeypatch, tmp_path):
    """pip's own last line (here: a file that is no wheel) is the error, not 'returned exit status 1'."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    (tmp_path / "megatron_core-0.16.1-py3-none-any.whl").write_bytes(b"not a zip file")
    monkeypatch.setattr(gpu_check, "_megatron_core_version", lambda: None)
    monkeypatch.setattr(gpu_check, "WHEELS", tmp_path)
    monkeypatch.setattr(gpu_check, "SITE", tmp_path / "site")
    with pytest.raises(RuntimeError) as err:
        gpu_check.packages(gpu_check.torch.device("cpu"))
    message = str(err.value)
    assert message.startswith(f"pip could not install {tmp_path}/*.whl into {tmp_path / 'site'} (exit 1): ")
    assert "\n" not in message and "megatron_core-0.16.1-py3-none-any.whl" in message


def test_a_step_whose_cleanup_meets_a_lost_cuda_context_is_recorded_and_the_next_step_runs(monkeypatch):
    """After a kernel fault (sticky CUDA error) every CUDA call raises, ``torch.cuda.empty_cache()``
    included: the step's cleanup records it instead of letting it escape."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    import gpu_check

    def sticky():
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(gpu_check.torch.cuda, "empty_cache", sticky)
    check = gpu_check.Check(None, {})
    assert check.step("exactness flash anchor", sticky) is None and check.cuda_lost
    error = check.steps["exactness flash anchor"]["error"]
    assert error.startswith("RuntimeError: CUDA error: an illegal") and "then CUDA context lost" in error
    monkeypatch.setattr(gpu_check.torch.cuda, "empty_cache", lambda: None)
    assert check.step("matmul", lambda: 1.0) == 1.0 and check.steps["matmul"]["ok"]


def test_the_docker_image_holds_the_gpu_check():
    """The image runs ``python benchmarks/gpu_check.py`` (README): its folder (with the ``doc_mixes.py`` it
    imports) and the package are copied in."""
    lines = (REPO / "Dockerfile").read_text().splitlines()
    copied = {line.split()[1] for line in lines if line.startswith("COPY ")}
    missing = {"megatron_anchor", "benchmarks"} - copied
    assert not missing, f"the image lacks {missing}"


def test_cp_demo_matches_dense_attention_on_two_ranks():
    """``benchmarks/cp_demo.py`` (the README's CP=2 self-check) runs under torchrun and passes its check."""
    from megatron_anchor.parallel import free_port

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr",
           "127.0.0.1", "--master-port", str(free_port()), "benchmarks/cp_demo.py"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "matches dense fp64 attention" in proc.stdout and "kernel calls" in proc.stdout
