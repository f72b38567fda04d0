"""Sequence parallelism (SP): megatron-core's own machinery, plus the two pieces it lacks for this model.

With ``TransformerConfig.sequence_parallel`` megatron-core keeps everything between its tensor-parallel
regions (the embedding output, norms, residual adds, the final norm) sharded along the sequence inside each
TP group, ``[s_local / tp, b, hidden]``: column-parallel linears (qkv, fc1, the output layer) all-gather
their input, row-parallel linears (proj, fc2) and the vocabulary-parallel embedding reduce-scatter their
output where they would all-reduce it. The core attention sits between qkv and proj, so it receives the
same ``[s_local, b, heads / tp, d]`` as without SP. Norm weights then see only their rank's tokens: their
gradients are partial sums over the TP group, which megatron-core marks with a ``sequence_parallel``
attribute (training sums them, see ``training.parallel.reduce_sequence_parallel_grads``).

What megatron-core 0.16 lacks here:
- norms for its local (non-TE) spec that accept SP and zero-centred weights: ``WrappedTorchNorm`` asserts
  both off. ``TorchNorm`` is torch's LayerNorm or RMSNorm (``config.normalization``) with megatron-core's
  norm constructor and the SP tag; TE's norms carry the tag themselves.
- execution without CUDA: its SP collectives allocate their outputs on ``torch.cuda.current_device()``
  (``tensor_parallel.mappings._gather_along_first_dim`` / ``_reduce_scatter_along_first_dim``, the global
  memory buffer and the backward of its SP linear), which raises on a CPU-only torch before any collective
  runs (gloo itself handles ``all_gather_into_tensor`` / ``reduce_scatter_tensor`` in fp32 and bf16).
  ``use_host_sequence_parallel`` re-classes the three megatron-core modules that call them to subclasses
  that issue the same collectives on the input's device and keep the same tensors for backward. It is
  applied only where CUDA is absent; on GPUs megatron-core's (or TE's) own code runs.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
from megatron.core.tensor_parallel.random import initialize_rng_tracker


class TorchNorm(torch.nn.Module):
    """torch's LayerNorm or RMSNorm (``config.normalization``) behind megatron-core's norm constructor
    ``(config, hidden_size, eps)``; SP-capable. With ``config.layernorm_zero_centered_gamma`` (Megatron's
    ``--apply-layernorm-1p``) the weight starts at 0 and scales by ``1 + weight``, as megatron-core's."""

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **kwargs) -> None:
        super().__init__()
        self.rms = config.normalization == "RMSNorm"
        self.zero_centered = config.layernorm_zero_centered_gamma
        self.shape, self.eps = (hidden_size,), eps
        self.weight = torch.nn.Parameter(torch.full(self.shape, 0.0 if self.zero_centered else 1.0))
        self.bias = None if self.rms else torch.nn.Parameter(torch.zeros(self.shape))
        for param in (self.weight, self.bias):
            if param is not None:
                # Under SP each TP rank normalises its own tokens: the gradients are partial sums.
                param.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., hidden]`` -> normalised ``[..., hidden]``."""
        weight = self.weight + 1 if self.zero_centered else self.weight
        if self.rms:
            return F.rms_norm(x, self.shape, weight, self.eps)
        return F.layer_norm(x, self.shape, weight, self.bias, self.eps)


def all_gather_first_dim(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """``[n, ...]`` on each of the group's ranks -> ``[n * size, ...]`` in rank order (same dtype)."""
    out = torch.empty((x.shape[0] * group.size(), *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous(), group=group)
    return out


def reduce_scatter_first_dim(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """``[n, ...]`` partial sums -> this rank's ``[n / size, ...]`` slice of their sum over the group."""
    size = group.size()
    if x.shape[0] % size:
        raise ValueError(f"first dimension {x.shape[0]} does not divide by the TP size {size}")
    out = torch.empty((x.shape[0] // size, *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, x.contiguous(), group=group)
    return out


class _ReduceScatterToSequenceParallel(torch.autograd.Function):
    """Sum partial results over TP and keep this rank's sequence slice; backward all-gathers."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return reduce_scatter_first_dim(x, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_first_dim(grad, ctx.group), None


class _SequenceParallelLinear(torch.autograd.Function):
    """``all_gather(x) @ weight.T (+ bias)``, keeping only the local shard of x for backward.

    As megatron-core's SP linear: backward gathers x again for the weight gradient and reduce-scatters
    the input gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, group):
        ctx.save_for_backward(x, weight)
        ctx.group, ctx.has_bias = group, bias is not None
        out = torch.matmul(all_gather_first_dim(x, group), weight.t())  # [s, b, k] -> [s, b, n / tp]
        return out if bias is None else out + bias

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = reduce_scatter_first_dim(grad.matmul(weight), ctx.group)  # [s, b, k] -> [s/tp, b, k]
        grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            total = all_gather_first_dim(x, ctx.group)  # [s, b, k]
            grad_w = grad.reshape(-1, grad.shape[-1]).t().matmul(total.reshape(-1, total.shape[-1]))
        if ctx.has_bias:
            grad_b = grad.reshape(-1, grad.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None


class _HostColumnParallelLinear(ColumnParallelLinear):
    """ColumnParallelLinear whose SP input all-gather runs on any device."""

    def _forward_impl(self, input, weight, *args, sequence_parallel=False, **kwargs):
        if not sequence_parallel:
            return super()._forward_impl(input, weight, *args, sequence_parallel=False, **kwargs)
        group = kwargs.get("tp_group") or self.tp_group
        return _SequenceParallelLinear.apply(input, weight, kwargs.get("bias"), group)


class _HostRowParallelLinear(RowParallelLinear):
    """RowParallelLinear whose SP output reduce-scatter runs on any device."""

    def forward(self, input_):
        """``[s, b, k / tp]`` -> ``([s / tp, b, n], bias)``: local matmul, then reduce-scatter over TP."""
        if not self.sequence_parallel:
            return super().forward(input_)
        partial = self._forward_impl(
            input=input_,
            weight=self.weight,
            bias=None,
            gradient_accumulation_fusion=self.gradient_accumulation_fusion,
            allreduce_dgrad=False,
            sequence_parallel=False,
            tp_group=self.tp_group,
            grad_output_buffer=None,
        )  # [s, b, n] partial sums
        out = _ReduceScatterToSequenceParallel.apply(partial, self.tp_group)  # [s / tp, b, n]
        if self.skip_bias_add:
            return out, self.bias
        return (out if self.bias is None else out + self.bias), None


class _HostVocabParallelEmbedding(VocabParallelEmbedding):
    """VocabParallelEmbedding whose SP reduce-scatter runs on any device."""

    def forward(self, input_):
        """token ids ``[b, s]`` -> ``[s / tp, b, hidden]`` (the rows this rank's vocabulary shard holds)."""
        if not self.reduce_scatter_embeddings:
            return super().forward(input_)
        outside = (input_ < self.vocab_start_index) | (input_ >= self.vocab_end_index)
        local_ids = (input_ - self.vocab_start_index).masked_fill(outside, 0)
        partial = torch.nn.functional.embedding(local_ids, self.weight)  # [b, s, h]
        partial = partial.masked_fill(outside.unsqueeze(-1), 0.0).transpose(0, 1).contiguous()  # [s, b, h]
        return _ReduceScatterToSequenceParallel.apply(partial, self.tp_group)


_HOST_CLASSES = {
    ColumnParallelLinear: _HostColumnParallelLinear,
    RowParallelLinear: _HostRowParallelLinear,
    VocabParallelEmbedding: _HostVocabParallelEmbedding,
}


def use_host_sequence_parallel(model: torch.nn.Module) -> None:
    """Let a megatron-core SP model run where CUDA is absent (see the module docstring); in place.

    Parameters, names, initialisation and checkpoints are megatron-core's: only the class of each SP
    module changes (as FSDP2's ``fully_shard`` re-classes the modules it wraps).
    """
    # megatron-core forks its CUDA RNG tracker around SP regions to draw the embedding's dropout mask; its
    # no-op tracker (the one it uses for inference) runs without CUDA: the mask comes from torch's CPU RNG.
    initialize_rng_tracker(inference_rng_tracker=True, force_reset=True)
    for module in model.modules():
        host_class = _HOST_CLASSES.get(type(module))
        if host_class is not None:
            module.__class__ = host_class
