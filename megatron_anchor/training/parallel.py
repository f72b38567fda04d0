"""Parallel set-up in one place: process groups (megatron-core parallel_state), model wrapping, mixed
precision, gradient reductions, grad norm.

Data parallelism runs over the DP x CP group (CP ranks hold the same weights and different tokens) with one
code path for CPU (gloo) and GPU (NCCL): torch DDP, or FSDP2 ``fully_shard`` without resharding after
forward (gradients and optimizer state sharded, parameters kept gathered: ZeRO-2-like) for
``--use-distributed-optimizer``. megatron-core's own DDP allocates its buffers on CUDA, so it is not used.

``--bf16`` keeps fp32 master weights and optimizer state everywhere (checkpoints stay fp32):
- FSDP2: torch's ``MixedPrecisionPolicy``: parameters all-gathered and used in bf16, gradients
  reduce-scattered in fp32 (bf16 with ``--grad-reduce-in-bf16``); no autocast.
- DDP: autocast over the fp32 parameters; gradients are fp32 and all-reduced in fp32, or in bf16 with
  ``--grad-reduce-in-bf16`` (Megatron's flag) through a communication hook.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.transformer_layer import TransformerLayer
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    _CHECKPOINT_PREFIX,
    apply_activation_checkpointing,
    checkpoint_wrapper,
)
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class ParallelDims:
    """Degrees and this process's coordinates; TP x CP x DP = world size (PP is 1)."""

    tp: int
    cp: int
    dp: int
    rank: int
    tp_rank: int
    cp_rank: int
    dp_rank: int

    @property
    def world(self) -> int:
        """Total number of processes."""
        return self.tp * self.cp * self.dp

    @property
    def dp_cp_group(self) -> dist.ProcessGroup:
        """The group that averages gradients: every replica of this TP shard."""
        return ps.get_data_parallel_group(with_context_parallel=True)


def device_for_rank() -> torch.device:
    """This process's device: its local GPU under torchrun, else the CPU."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(
    tp: int, cp: int, timeout_minutes: float = 10.0, hierarchical_cp_sizes: list[int] | None = None
) -> ParallelDims:
    """Join the torchrun process group (NCCL on GPU, gloo on CPU) and build TP/CP/DP groups; a collective
    that waits more than ``timeout_minutes`` (a stalled or dead rank) raises instead of hanging.

    ``hierarchical_cp_sizes [A, P]``: megatron-core's hierarchical CP groups, inner groups of A consecutive
    ranks and outer groups across them (``--cp-comm-type a2a+p2p``).
    """
    timeout = timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout)
    world = dist.get_world_size()
    if world % (tp * cp):
        raise ValueError(f"world size {world} is not divisible by TP {tp} x CP {cp}")
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=tp,
            pipeline_model_parallel_size=1,
            context_parallel_size=cp,
            hierarchical_context_parallel_sizes=hierarchical_cp_sizes,
            distributed_timeout_minutes=timeout_minutes,  # megatron-core builds a timedelta from it
        )
    return ParallelDims(
        tp=tp,
        cp=cp,
        dp=world // (tp * cp),
        rank=dist.get_rank(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        cp_rank=ps.get_context_parallel_rank(),
        dp_rank=ps.get_data_parallel_rank(),
    )


def teardown_distributed() -> None:
    """Destroy megatron-core's groups and the default group."""
    ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def tensor_parallel_param_names(model: torch.nn.Module) -> set[str]:
    """Names of parameters split across TP ranks (the rest are TP replicas); read before FSDP wrapping."""
    return {n for n, p in model.named_parameters() if getattr(p, "tensor_model_parallel", False)}


def sequence_parallel_param_names(model: torch.nn.Module) -> set[str]:
    """Names of TP-replicated parameters whose gradients are partial sums over TP under sequence parallelism.

    megatron-core tags them (norm weights) with ``sequence_parallel``; read before wrapping (FSDP2 drops it).
    """
    return {n for n, p in model.named_parameters() if getattr(p, "sequence_parallel", False)}


def parallelize(
    model: torch.nn.Module,
    dims: ParallelDims,
    *,
    recompute_full: bool,
    distributed_optimizer: bool,
    recompute_num_layers: int | None = None,
    bf16: bool = False,
    grad_reduce_in_bf16: bool = False,
) -> torch.nn.Module:
    """Apply full activation recompute (every layer, or the first ``recompute_num_layers``), then DDP or
    FSDP2 over the DP x CP group (torchtitan's order)."""
    if recompute_full:
        # torch's checkpoint wrapper per layer: megatron-core's recompute uses the CUDA RNG tracker.
        limit = model.config.num_layers if recompute_num_layers is None else recompute_num_layers
        apply_activation_checkpointing(
            model,
            checkpoint_wrapper_fn=checkpoint_wrapper,
            check_fn=lambda m: isinstance(m, TransformerLayer) and m.layer_number <= limit,
        )
    group = dims.dp_cp_group
    device = next(model.parameters()).device
    reduce_dtype = torch.bfloat16 if grad_reduce_in_bf16 else torch.float32
    if distributed_optimizer:
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mesh = DeviceMesh.from_group(group, device_type=device.type)
        # Inputs are token ids and the sample layout (doc ids, positions, fp32 RoPE angles): nothing to
        # cast, and a cast would copy the layout per layer; every float activation comes from bf16 modules.
        mp = MixedPrecisionPolicy(
            param_dtype=torch.bfloat16, reduce_dtype=reduce_dtype, cast_forward_inputs=False
        )
        shard = dict(mesh=mesh, reshard_after_forward=False, mp_policy=mp if bf16 else MixedPrecisionPolicy())
        for layer in model.decoder.layers:
            fully_shard(layer, **shard)
        fully_shard(model, **shard)
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    ddp = DistributedDataParallel(model, process_group=group, device_ids=device_ids)
    if grad_reduce_in_bf16:
        ddp.register_comm_hook(group, allreduce_in_bf16)
    return ddp


def allreduce_in_bf16(group, bucket):  # unannotated: DDP checks hook annotations as objects, these are str
    """DDP communication hook: average a gradient bucket over ``group`` in bf16; gradients stay fp32.

    What torch's ``bf16_compress_hook`` does; torch refuses that one (by name) outside NCCL/XCCL. Takes a
    ``dist.ProcessGroup`` and a ``dist.GradBucket``, returns a ``Future`` of the averaged bucket.
    """
    grads = bucket.buffer()  # fp32, flat
    wire = grads.to(torch.bfloat16).div_(group.size())

    def unpack(fut: torch.futures.Future) -> torch.Tensor:
        return grads.copy_(fut.value()[0])

    return dist.all_reduce(wire, group=group, async_op=True).get_future().then(unpack)


def autocast_for(device: torch.device, *, bf16: bool, distributed_optimizer: bool):
    """The context forward and backward run under: autocast to bf16 for ``--bf16`` with DDP, else none.

    Under FSDP2 the ``MixedPrecisionPolicy`` hands the layers bf16 parameters, so nothing is autocast.
    """
    if not bf16 or distributed_optimizer:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool):
    """Within it, backward reduces gradients across DP x CP only when ``enabled`` (last micro-batch)."""
    if isinstance(model, DistributedDataParallel):
        with contextlib.nullcontext() if enabled else model.no_sync():
            yield
        return
    model.set_requires_gradient_sync(enabled)  # FSDP2
    yield


def unwrapped_name(name: str) -> str:
    """A parameter's name without the prefix full recompute's checkpoint wrapper inserts."""
    return name.replace(_CHECKPOINT_PREFIX, "")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


def reduce_sequence_parallel_grads(
    raw_model: torch.nn.Module, sp_names: set[str], dims: ParallelDims
) -> None:
    """Sum the gradients of ``sp_names`` over the TP group (in one flat all-reduce), once per step.

    Megatron's own DDP does this in ``finalize_model_grads``; torch's DDP and FSDP2 know nothing of TP. TP
    peers hold the same FSDP2 shard of each such parameter, so local shards are summed.
    """
    if not sp_names or dims.tp == 1:
        return
    grads = [
        _local(p.grad)
        for name, p in raw_model.named_parameters()
        if p.grad is not None and unwrapped_name(name) in sp_names
    ]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # one collective for every norm weight
    dist.all_reduce(flat, group=ps.get_tensor_model_parallel_group())
    for g, summed in zip(grads, flat.split([g.numel() for g in grads])):
        g.copy_(summed.view_as(g))


def clip_grad_norm_(
    raw_model: torch.nn.Module, tp_names: set[str], max_norm: float, dims: ParallelDims, sharded: bool
) -> float:
    """Global L2 norm of all gradients (each TP shard once, FSDP shards summed); clip to ``max_norm``."""
    device = next(raw_model.parameters()).device
    squares = torch.zeros(2, dtype=torch.float64, device=device)  # [TP-split params, TP replicas]
    grads = []
    for name, p in raw_model.named_parameters():
        if p.grad is None:
            continue
        grads.append(p.grad)
        name = unwrapped_name(name)
        squares[0 if name in tp_names else 1] += _local(p.grad).double().pow(2).sum()
    if sharded:  # FSDP2 gradients are shards over DP x CP
        dist.all_reduce(squares, group=dims.dp_cp_group)
    if dims.tp > 1:
        tp_sq = squares[:1].clone()
        dist.all_reduce(tp_sq, group=ps.get_tensor_model_parallel_group())
        squares[0] = tp_sq[0]
    norm = float(squares.sum().sqrt())
    if max_norm > 0 and norm > max_norm:
        coef = max_norm / (norm + 1e-6)
        for g in grads:
            g.mul_(coef)
    return norm
