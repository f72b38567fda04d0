"""One run per --save: a second torchrun job on the same --save stops at start-up naming the holder, whose
files stay its own; the lock a killed run left behind is taken over with a note."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket

import pytest
from train_harness import TINY, reference_run, run_pretrain, start_pretrain, worker_pids

from megatron_anchor._output_lock import OutputLock
from megatron_anchor.training.arguments import gather_configuration


def test_a_second_run_on_the_same_save_is_refused_and_a_dead_runs_lock_is_taken_over(tmp_path):
    save = tmp_path / "run"
    lock = save / "run.lock"
    first = start_pretrain(1, [*TINY, "--train-iters", "100000", "--save", str(save)], tmp_path / "a", [])
    try:
        # The lock is taken as the process group forms, before anything is written to --save.
        first.wait_for(lambda: lock.is_file() and lock.read_text().endswith("\n"), "the lock")
        (holder,) = worker_pids(first.proc.pid).values()
        _, second = run_pretrain(1, [*TINY, "--save", str(save)], tmp_path / "b", expect_fail=True)
        assert lock.read_text() == f"{holder} on {socket.gethostname()}\n"
        assert second.stderr.splitlines()[0] == (  # the start-up report's, before any process group
            f"error: {lock}: another run (pid {holder} on {socket.gethostname()}) is writing this "
            f"output; wait for it to finish or choose another --save"
        )
        assert "megatron_anchor/" not in second.stderr  # one line of ours (then torchrun's own report)
        config = json.loads((save / "train_config.json").read_text())
        assert config["train_iters"] == 100000  # the first run's configuration was not overwritten
        for pid in (holder, first.proc.pid):
            os.kill(pid, signal.SIGKILL)
        first.proc.wait(timeout=60)
    finally:
        first.proc.kill()
    assert lock.read_text().startswith(f"{holder} on ")  # left behind, but no process holds it any more
    records, third = run_pretrain(1, [*TINY, "--train-iters", "2", "--save", str(save)], tmp_path / "c")
    note = f"note: {lock}: took over the lock of pid {holder} on {socket.gethostname()}, which has ended"
    assert note in third.stdout.splitlines()
    assert (save / "latest").read_text() == "iter_0000002\n" and not lock.exists()  # released at the end


def test_the_start_up_report_names_the_holder_of_the_save_lock_and_leaves_it_held(tmp_path):
    save = tmp_path / "run"
    save.mkdir()
    lock = save / "run.lock"
    held = OutputLock(str(lock), "--save")  # a live run's (this process's, on another descriptor)
    try:
        _, report = gather_configuration([*TINY, "--dry-run", "--save", str(save)], 1)
        assert report.errors == [
            f"{lock}: another run (pid {os.getpid()} on {socket.gethostname()}) is writing this output; wait "
            f"for it to finish or choose another --save"
        ]
        assert lock.read_text() == f"{os.getpid()} on {socket.gethostname()}\n"
    finally:
        held.release()
    _, report = gather_configuration([*TINY, "--dry-run", "--save", str(save)], 1)
    assert report.errors == [] and not lock.exists()  # the probe creates no lock file


def test_only_rank_0_probes_the_save_lock_it_takes_itself(tmp_path, monkeypatch):
    """Under torchrun with NCCL nothing waits for every rank before rank 0 takes --save's lock: a rank still
    checking its flags then finds the lock of its own run. Only rank 0, which takes it, probes it."""
    from megatron_anchor.training.checkpoint_args import check_save_writable

    save = tmp_path / "run"
    save.mkdir()
    held = OutputLock(str(save / "run.lock"), "--save")  # rank 0 of this run, already past its checks
    try:
        for rank in ("1", "8"):
            monkeypatch.setenv("RANK", rank)
            monkeypatch.setenv("LOCAL_RANK", str(int(rank) % 8))
            check_save_writable(str(save))
        monkeypatch.setenv("RANK", "0")
        monkeypatch.setenv("LOCAL_RANK", "0")
        with pytest.raises(ValueError, match=f"^{save / 'run.lock'}: another run"):
            check_save_writable(str(save))
    finally:
        held.release()


def test_a_held_save_lock_is_reported_with_the_resume_problems_in_one_round(tmp_path):
    """A resume whose schedule differs from the checkpoint's, onto a --save another run holds: both
    problems in one report (the lock used to come only once the schedule was fixed)."""
    ckpt, _, _, _ = reference_run()
    save = tmp_path / "ckpt"
    shutil.copytree(ckpt, save)
    lock = save / "run.lock"
    held = OutputLock(str(lock), "--save")
    try:
        flags = [*TINY, "--train-iters", "8", "--load", str(save), "--save", str(save), "--dry-run"]
        _, report = gather_configuration(flags, 1)
    finally:
        held.release()
    assert len(report.errors) == 2, report.errors
    assert report.errors[0].startswith(f"the LR schedule differs from checkpoint {save / 'iter_0000006'}: ")
    assert report.errors[1].startswith(f"{lock}: another run (pid {os.getpid()} on {socket.gethostname()})")
