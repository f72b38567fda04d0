"""examples/common.sh's launcher under a Slurm-style preemption: SIGTERM to the launcher and to every worker
saves a checkpoint after the step in flight and ends the job with exit 0 (real processes, CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from megatron_anchor.parallel import free_port
from tests.training.train_harness import MODEL, REPO, Job, read_log, worker_pids

LAUNCHER = 'source "{repo}/examples/common.sh"\nlaunch_pretrain "$@"\n'
FLAGS = [
    *MODEL,
    *"--seq-length 32 --micro-batch-size 1 --global-batch-size 1 --train-iters 400".split(),
    *"--mock-data --vocab-size 256 --log-interval 1 --exit-signal-handler".split(),
]


def test_sigterm_to_the_launcher_and_its_workers_saves_and_exits_0(tmp_path: Path) -> None:
    script = tmp_path / "launch.sh"
    script.write_text("set -euo pipefail\n" + LAUNCHER.format(repo=REPO))
    save, log = tmp_path / "ckpt", tmp_path / "log.jsonl"
    path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"  # this environment's python and torchrun
    env = dict(os.environ, PYTHON=sys.executable, PATH=path, NNODES="1", GPUS_PER_NODE="1",
               MASTER_PORT=str(free_port()), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", SAVE=str(save))
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(["bash", str(script), *FLAGS, "--save", str(save), "--log-jsonl", str(log)],
                                cwd=REPO, env=env, stdout=out, stderr=err)  # fmt: skip
    job = Job(proc, log, tmp_path / "out.txt", tmp_path / "err.txt")
    try:
        job.wait_for_step(1)
        for pid in [proc.pid, *worker_pids(proc.pid).values()]:  # the launcher execs torchrun: same pid
            os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "Traceback" not in job.err(), job.err()[-3000:]
    stop = next(r for r in read_log(log) if "exit" in r)
    assert stop["exit"] == "SIGTERM received (--exit-signal-handler)"
    assert (save / "latest").read_text().strip() == f"iter_{stop['step']:07d}"
