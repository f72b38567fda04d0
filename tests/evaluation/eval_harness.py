"""Shared pieces of the evaluation tests: a one-process group, tiny model flags, running the tools."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_anchor.parallel import free_port
from megatron_anchor.training.model_args import LLAMA_ARCHITECTURE_FLAGS

REPO = Path(__file__).resolve().parents[2]
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

# A tiny Llama model (GQA: 4 query heads over 2 key/value groups; RMSNorm, SwiGLU, no biases, untied).
TINY_MODEL = [
    *LLAMA_ARCHITECTURE_FLAGS,
    "--num-layers",
    "2",
    "--hidden-size",
    "64",
    "--num-attention-heads",
    "4",
    "--num-query-groups",
    "2",
    "--ffn-hidden-size",
    "128",
    "--seed",
    "3",
]


@pytest.fixture(scope="module")
def process_group():
    """megatron-core's groups on a one-process gloo group (TP = CP = 1); the environment is restored."""
    from megatron_anchor.evaluation.loading import init_eval_distributed
    from megatron_anchor.training import teardown_distributed

    saved = {k: os.environ.get(k) for k in DIST_ENV}
    dims = init_eval_distributed(1, 1)
    yield dims
    teardown_distributed()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def run_tool(script: str, flags: list[str], nproc: int = 1, timeout: int = 240, expect_fail: bool = False,
             preexec_fn=None):  # fmt: skip
    """Run ``tools/<script>`` with python (nproc 1) or torchrun on 127.0.0.1; raise unless it fails or
    succeeds as ``expect_fail`` says."""
    launcher = [sys.executable]
    if nproc > 1:
        endpoint = ["--master-addr=127.0.0.1", f"--master-port={free_port()}"]
        launcher += ["-m", "torch.distributed.run", f"--nproc-per-node={nproc}", *endpoint]
    cmd = [*launcher, str(REPO / "tools" / script), *flags]
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn
    )
    if (proc.returncode != 0) != expect_fail:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def is_png(path: Path) -> bool:
    """The file exists and starts with the PNG signature."""
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
