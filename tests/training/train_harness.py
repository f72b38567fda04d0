"""Launch ``megatron_anchor.pretrain`` under torchrun on 127.0.0.1 and read back its JSONL log."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from megatron_anchor.parallel import free_port
from megatron_anchor.training.model_args import LLAMA_ARCHITECTURE_FLAGS

REPO = Path(__file__).resolve().parents[2]

# A tiny Llama model (2 layers, hidden 64, GQA 4/2 heads; RMSNorm, SwiGLU, no biases, untied, no dropout).
MODEL = [
    *"--num-layers 2 --hidden-size 64 --ffn-hidden-size 128".split(),
    *"--num-attention-heads 4 --num-query-groups 2".split(),
    *LLAMA_ARCHITECTURE_FLAGS,
]
# ... on synthetic packed samples of S = 64: fp32, 6 steps with warmup and cosine decay.
TINY = [
    *MODEL,
    *"--seq-length 64 --micro-batch-size 1 --global-batch-size 4 --train-iters 6".split(),
    *"--lr 2e-3 --min-lr 2e-4 --lr-warmup-iters 2".split(),
    *"--mock-data --vocab-size 256 --log-interval 1 --seed 7".split(),
]


def _command(nproc: int, flags: list[str], log: Path, launcher: list[str]) -> list[str]:
    endpoint = ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    run = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        *endpoint,
        *launcher,
    ]
    return [*run, "-m", "megatron_anchor.pretrain", *flags, "--log-jsonl", str(log)]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def read_log(log: Path) -> list[dict]:
    """The JSONL records written so far."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def run_pretrain(
    nproc: int,
    flags: list[str],
    workdir: Path,
    timeout: int = 180,
    expect_fail: bool = False,
    preexec_fn=None,
) -> tuple[list[dict], subprocess.CompletedProcess]:
    """Run torchrun with ``nproc`` processes; returns (log records, the finished process)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"log_{free_port()}.jsonl"
    cmd = _command(nproc, flags, log, [])
    proc = subprocess.run(
        cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn
    )
    if (proc.returncode != 0) != expect_fail:
        raise AssertionError(
            f"torchrun exited {proc.returncode} (expected {'failure' if expect_fail else 'success'}):\n"
            f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return read_log(log), proc


@dataclass
class Job:
    """A torchrun job started in the background: its process, JSONL log and output files."""

    proc: subprocess.Popen
    log: Path
    stdout: Path
    stderr: Path

    def wait_for(self, found: Callable[[], bool], what: str, timeout: float = 120) -> float:
        """Poll until ``found()``; returns the time it became true (AssertionError if the job ends first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found():
                return time.monotonic()
            if self.proc.poll() is not None and not found():
                raise AssertionError(
                    f"the job ended (rc {self.proc.returncode}) before {what}:\n{self.err()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s")

    def wait_for_step(self, step: int) -> float:
        """Until the log holds a loss for ``step`` or later."""
        return self.wait_for(
            lambda: any(r.get("step", 0) >= step and "loss" in r for r in read_log(self.log)), f"step {step}"
        )

    def err(self) -> str:
        """Its stderr so far."""
        return self.stderr.read_text()


def start_pretrain(nproc: int, flags: list[str], workdir: Path, launcher: list[str], preexec_fn=None) -> Job:
    """Start torchrun (extra torchrun flags ``launcher``) in the background; output goes to files."""
    workdir.mkdir(parents=True, exist_ok=True)
    tag = free_port()
    job = Job(None, workdir / f"log_{tag}.jsonl", workdir / f"out_{tag}.txt", workdir / f"err_{tag}.txt")
    with open(job.stdout, "w") as out, open(job.stderr, "w") as err:
        job.proc = subprocess.Popen(
            _command(nproc, flags, job.log, launcher),
            cwd=REPO,
            env=_env(),
            stdout=out,
            stderr=err,
            preexec_fn=preexec_fn,
        )
    return job


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of the worker processes a torchrun process started (read from /proc)."""
    workers = {}
    for entry in Path("/proc").iterdir():
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher_pid:
                continue
            env = dict(v.split("=", 1) for v in (entry / "environ").read_text().split("\0") if "=" in v)
        except (OSError, ValueError, IndexError):
            continue
        if "RANK" in env:
            workers[int(env["RANK"])] = int(entry.name)
    return workers


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

    It also saves after step 3 and step 6, with ``--load`` = ``--save`` (the auto-resume pattern: the
    first run starts from scratch). Returns (checkpoint dir, losses by step, stdout, gradient norms by step).
    """
    work = Path(tempfile.mkdtemp(prefix="anchor_ref_"))
    ckpt = str(work / "ckpt")
    flags = [*TINY, "--save", ckpt, "--save-interval", "3", "--load", ckpt]
    records, proc = run_pretrain(1, flags, work)
    return work / "ckpt", step_losses(records), proc.stdout, step_losses(records, "grad_norm")


def validate_tiny(extra: list[str], world_size: int = 1):
    """``validate_args`` of the ``TINY`` model's flags plus ``extra`` at ``world_size``: the checked args."""
    from megatron_anchor.training import build_parser, validate_args

    return validate_args(build_parser().parse_args([*TINY, *extra]), world_size)


def copy_reference_checkpoint(tmp_path: Path) -> Path:
    """A copy of ``reference_run``'s checkpoint at ``tmp_path/ckpt``, for a test to damage or edit."""
    ckpt, _, _, _ = reference_run()
    copy = tmp_path / "ckpt"
    shutil.copytree(ckpt, copy)
    return copy


def dry_run_in_process(argv: list[str], world_size: int, monkeypatch, capsys) -> tuple[int, str, str]:
    """``pretrain.main(argv + ["--dry-run"])`` in this process as rank 0 of ``world_size``: (exit code,
    stdout, stderr)."""
    from megatron_anchor.pretrain import main

    monkeypatch.setenv("WORLD_SIZE", str(world_size))
    monkeypatch.setenv("RANK", "0")
    try:
        main([*argv, "--dry-run"])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err
