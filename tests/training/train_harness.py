"""Launch ``megatron_anchor.pretrain`` under torchrun on 127.0.0.1 and read back its JSONL log."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from megatron_anchor.parallel import free_port

REPO = Path(__file__).resolve().parents[2]

# A tiny Llama-shaped model (2 layers, hidden 64, GQA 4/2 heads).
MODEL = [
    *"--num-layers 2 --hidden-size 64 --ffn-hidden-size 128".split(),
    *"--num-attention-heads 4 --num-query-groups 2".split(),
]
# ... on synthetic packed samples of S = 64: fp32, 6 steps with warmup and cosine decay.
TINY = [
    *MODEL,
    *"--seq-length 64 --micro-batch-size 1 --global-batch-size 4 --train-iters 6".split(),
    *"--lr 2e-3 --min-lr 2e-4 --lr-warmup-iters 2".split(),
    *"--mock-data --vocab-size 256 --log-interval 1 --seed 7".split(),
]


def run_pretrain(
    nproc: int, flags: list[str], workdir: Path, timeout: int = 180, expect_fail: bool = False
) -> tuple[list[dict], subprocess.CompletedProcess]:
    """Run torchrun with ``nproc`` processes; returns (log records, the finished process)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"log_{free_port()}.jsonl"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
        "-m",
        "megatron_anchor.pretrain",
        *flags,
        "--log-jsonl",
        str(log),
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    if (proc.returncode != 0) != expect_fail:
        raise AssertionError(
            f"torchrun exited {proc.returncode} (expected {'failure' if expect_fail else 'success'}):\n"
            f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return records, proc


def step_losses(records: list[dict], key: str = "loss") -> dict[int, float]:
    """Training loss (or another logged value, e.g. ``grad_norm``) by step number."""
    return {r["step"]: r[key] for r in records if key in r}


def assert_losses_close(got: dict[int, float], want: dict[int, float], rel: float) -> None:
    """Same steps, each loss within ``rel`` relative difference."""
    assert sorted(got) == sorted(want), (sorted(got), sorted(want))
    for step, value in want.items():
        assert abs(got[step] - value) <= rel * abs(value), f"step {step}: {got[step]} vs {value}"


@functools.lru_cache(maxsize=1)
def reference_run() -> tuple[Path, dict[int, float], str, dict[int, float]]:
    """The single-process run every parallel and resumed run is compared with (once per session).

    It also saves after step 3 and step 6, and starts with ``--load`` of an empty directory.
    Returns (checkpoint dir, losses by step, stdout, gradient norms by step).
    """
    work = Path(tempfile.mkdtemp(prefix="anchor_ref_"))
    flags = [*TINY, "--save", str(work / "ckpt"), "--save-interval", "3", "--load", str(work / "none")]
    records, proc = run_pretrain(1, flags, work)
    return work / "ckpt", step_losses(records), proc.stdout, step_losses(records, "grad_norm")
