"""Save at step k, resume: the losses of steps k+1.. equal the uninterrupted run (also at another DP size)."""

from __future__ import annotations

import json

from train_harness import TINY, assert_losses_close, reference_run, run_pretrain, step_losses


def test_checkpoint_layout_is_complete_and_atomic():
    ckpt, _, stdout, _ = reference_run()
    assert (ckpt / "latest").read_text().strip() == "iter_0000006"
    # Megatron-LM's tracker beside it, in Megatron-LM's format (str(iteration), no newline); no run.lock left
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text() == "6"
    listing = sorted(p.name for p in ckpt.iterdir())
    assert listing == [
        "iter_0000003", "iter_0000006", "latest", "latest_checkpointed_iteration.txt", "train_config.json"
    ]  # fmt: skip
    meta = json.loads((ckpt / "iter_0000003" / "meta.json").read_text())
    assert meta["step"] == 3 and meta["consumed_samples"] == 12 and meta["dp"] == 1
    assert (ckpt / "iter_0000003" / "rng" / "rank0.pt").is_file()
    assert "iter_0000003" in stdout


def test_resume_same_world_size_continues_exactly(tmp_path):
    ckpt, full, _, _ = reference_run()
    records, proc = run_pretrain(1, [*TINY, "--load", str(ckpt / "iter_0000003")], tmp_path)
    assert "resumed from" in proc.stdout and "RNG restored" in proc.stdout
    assert_losses_close(step_losses(records), {s: v for s, v in full.items() if s > 3}, rel=1e-6)


def test_resume_at_data_parallel_2_with_distributed_optimizer(tmp_path):
    """A DDP checkpoint of one process resumes on two FSDP2 processes (model and Adam state resharded)."""
    ckpt, full, _, _ = reference_run()
    flags = [*TINY, "--load", str(ckpt / "iter_0000003"), "--use-distributed-optimizer"]
    records, proc = run_pretrain(2, flags, tmp_path)
    assert "resumed from" in proc.stdout and "RNG from --seed" in proc.stdout
    assert_losses_close(step_losses(records), {s: v for s, v in full.items() if s > 3}, rel=1e-4)
