"""``--bf16``: FSDP2's bf16 parameter policy and DDP's bf16 reduction track fp32 training; checkpoints stay
fp32 and a bf16 FSDP2 run resumes exactly."""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from train_harness import TINY, assert_losses_close, run_pretrain, step_losses

from megatron_anchor.parallel import free_port
from megatron_anchor.training.parallel import allreduce_in_bf16

TEN_STEPS = [*TINY, "--train-iters", "10"]  # argparse keeps the last --train-iters
BF16_TOLERANCE = 1e-2  # relative; bf16 keeps 8 bits of mantissa (eps 7.8e-3)


@functools.lru_cache(maxsize=1)
def fp32_run() -> tuple[dict[int, float], dict[int, float]]:
    """Ten fp32 steps in one process: (losses, grad norms) by step."""
    records, _ = run_pretrain(1, TEN_STEPS, Path(tempfile.mkdtemp(prefix="anchor_fp32_")))
    return step_losses(records), step_losses(records, "grad_norm")


@functools.lru_cache(maxsize=1)
def fsdp2_bf16_run() -> tuple[Path, dict[int, float], dict[int, float]]:
    """Ten bf16 steps on two FSDP2 ranks, saving after step 5 and 10: (checkpoints, losses, grad norms)."""
    work = Path(tempfile.mkdtemp(prefix="anchor_bf16_"))
    flags = [
        *TEN_STEPS,
        "--bf16",
        "--use-distributed-optimizer",
        "--save",
        str(work / "ck"),
        "--save-interval",
        "5",
    ]
    records, _ = run_pretrain(2, flags, work)
    return work / "ck", step_losses(records), step_losses(records, "grad_norm")


def test_fsdp2_bf16_policy_tracks_fp32_over_ten_steps():
    _, losses, grad_norms = fsdp2_bf16_run()
    want_losses, want_norms = fp32_run()
    assert_losses_close(losses, want_losses, rel=BF16_TOLERANCE)
    assert_losses_close(grad_norms, want_norms, rel=BF16_TOLERANCE)
    assert losses != want_losses  # bf16 compute really ran: the losses are not the fp32 ones
    assert losses[10] < losses[1] - 0.5


def test_fsdp2_bf16_checkpoint_is_fp32_and_resumes_exactly(tmp_path):
    ckpt, losses, _ = fsdp2_bf16_run()
    metadata = dcp.FileSystemReader(str(ckpt / "iter_0000005")).read_metadata().state_dict_metadata
    dtypes = {name: meta.properties.dtype for name, meta in metadata.items() if hasattr(meta, "properties")}
    weights = [n for n in dtypes if ".model." in n and n.endswith("weight")]
    moments = [n for n in dtypes if n.endswith(("exp_avg", "exp_avg_sq"))]
    assert weights and moments
    assert {dtypes[n] for n in weights + moments} == {torch.float32}  # master weights and Adam state
    flags = [*TEN_STEPS, "--bf16", "--use-distributed-optimizer", "--load", str(ckpt / "iter_0000005")]
    records, proc = run_pretrain(2, flags, tmp_path)
    assert "resumed from" in proc.stdout and "RNG restored" in proc.stdout
    assert step_losses(records) == {s: v for s, v in losses.items() if s > 5}


def test_ddp_bf16_with_bf16_gradient_reduction_and_sequence_parallel_tracks_fp32(tmp_path):
    """DDP (autocast) at DP=2 x TP=2 with SP, gradients averaged in bf16."""
    flags = ["--bf16", "--grad-reduce-in-bf16", "--tensor-model-parallel-size", "2", "--sequence-parallel"]
    records, _ = run_pretrain(4, [*TEN_STEPS, *flags], tmp_path)
    want_losses, want_norms = fp32_run()
    assert_losses_close(step_losses(records), want_losses, rel=BF16_TOLERANCE)
    assert_losses_close(step_losses(records, "grad_norm"), want_norms, rel=BF16_TOLERANCE)


def test_bf16_reduction_hook_rounds_on_the_wire_and_keeps_fp32_gradients():
    """With the hook DDP yields the fp32 gradients rounded to bf16 (one rank: nothing else changes)."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        reference = torch.nn.Linear(16, 8)
        model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(16, 8))
        model.module.load_state_dict(reference.state_dict())
        model.register_comm_hook(dist.group.WORLD, allreduce_in_bf16)
        x = torch.randn(4, 16)
        reference(x).square().sum().backward()
        model(x).square().sum().backward()
        for got, exact in zip(model.module.parameters(), reference.parameters()):
            assert got.grad.dtype == torch.float32
            assert torch.equal(got.grad, exact.grad.to(torch.bfloat16).float())
            assert not torch.equal(got.grad, exact.grad)
    finally:
        dist.destroy_process_group()
