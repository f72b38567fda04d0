"""The all-to-all of ``--cp-comm-type a2a`` and ``a2a+p2p`` (DeepSpeed-Ulysses): tokens for heads.

Before the core attention each of the ``A`` ranks of an all-to-all group holds its ``L`` tokens for every
head of its TP rank; ``scatter_heads`` gives it the group's ``A * L`` tokens (rank ``j``'s tokens at rows
``j*L .. j*L + L - 1``) for its ``1 / A`` of the heads (heads ``i*h/A .. (i+1)*h/A - 1`` on group rank
``i``); ``gather_heads`` is its inverse, for the output. Each is one ``all_to_all_single`` (q, k and v
travel in one message), and each one's backward is the other one. Shapes are fixed by the inputs: nothing
is read back from the device.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _all_to_all(send: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """``recv[j] = send[i]`` of rank ``j`` on rank ``i``, for ``send [A, ...]`` contiguous."""
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return recv


def scatter_heads(tensors: list[torch.Tensor], group: dist.ProcessGroup) -> list[torch.Tensor]:
    """``[L, b, h_t, d]`` each -> ``[A * L, b, h_t / A, d]`` each (every ``h_t`` divides by A)."""
    size = dist.get_world_size(group)
    local_len, batch, _, dim = tensors[0].shape
    widths = [t.shape[2] // size for t in tensors]
    # [A, L, b, sum(h_t) / A, d]: the message to rank j holds head chunk j of every tensor, side by side.
    send = torch.cat(
        [t.reshape(local_len, batch, size, w, dim).permute(2, 0, 1, 3, 4) for t, w in zip(tensors, widths)], 3
    )
    recv = _all_to_all(send, group).view(size * local_len, batch, sum(widths), dim)
    return list(recv.split(widths, dim=2))


def gather_heads(tensors: list[torch.Tensor], group: dist.ProcessGroup) -> list[torch.Tensor]:
    """The inverse of ``scatter_heads``: ``[A * L, b, h_t / A, d]`` each -> ``[L, b, h_t, d]`` each."""
    size = dist.get_world_size(group)
    rows, batch, _, dim = tensors[0].shape
    widths = [t.shape[2] for t in tensors]
    send = torch.cat(tensors, dim=2).view(size, rows // size, batch, sum(widths), dim)  # [A, L, b, w, d]
    recv = _all_to_all(send.contiguous(), group)  # recv[j]: my tokens, head chunk j
    parts = recv.split(widths, dim=3)
    return [
        p.permute(1, 2, 0, 3, 4).reshape(rows // size, batch, size * w, dim) for p, w in zip(parts, widths)
    ]


class _ScatterHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, *tensors):
        ctx.group = group
        return tuple(scatter_heads(list(tensors), group))

    @staticmethod
    def backward(ctx, *grads):
        return (None, *gather_heads(list(grads), ctx.group))


class _GatherHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, group, *tensors):
        ctx.group = group
        return tuple(gather_heads(list(tensors), group))

    @staticmethod
    def backward(ctx, *grads):
        return (None, *scatter_heads(list(grads), ctx.group))


def heads_for_tokens(q, k, v, group: dist.ProcessGroup) -> tuple[torch.Tensor, ...]:
    """Differentiable ``scatter_heads`` of q ``[L, b, h, d]``, k/v ``[L, b, h_kv, d]``: one all-to-all."""
    return _ScatterHeads.apply(group, q, k, v)


def tokens_for_heads(out: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Differentiable ``gather_heads`` of the attention's output ``[A * L, b, h / A, d]``."""
    return _GatherHeads.apply(group, out)[0]
