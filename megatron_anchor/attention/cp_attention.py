"""Public entry of the anchor-aware context-parallel attention, and its autograd Function.

Single process::

    out = anchor_cp_attention(q, k, v, doc_ids)                      # q [S, b, h, d], doc_ids [b, S]

CP ranks (each holds chunks r and 2*cp-1-r of the sample, see ``megatron_anchor.parallel.cp_layout``)::

    out = anchor_cp_attention(q_local, k_local, v_local, doc_ids, cp_group=group)

``MEGATRON_ANCHOR_ATTENTION_BACKEND`` (auto, torch, sdpa_cpu, flex) picks the kernel when ``backend`` is
not given; ``MEGATRON_ANCHOR_CHECK_DOC_IDS=1`` checks that every rank got the same doc_ids.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from megatron_anchor.attention.backends import select_backend
from megatron_anchor.attention.comm import CPComm
from megatron_anchor.attention.plan import AttentionStats, build_ring_plan
from megatron_anchor.attention.reference import ATTENTION_MODES
from megatron_anchor.attention.ring import ring_backward, ring_forward
from megatron_anchor.parallel.cp_layout import check_divisible

BACKEND_ENV = "MEGATRON_ANCHOR_ATTENTION_BACKEND"


def _heads_major(t: torch.Tensor) -> torch.Tensor:
    return t.permute(1, 2, 0, 3)  # [s, b, h, d] -> [b, h, s, d] (a view: the kernels take strides)


class _AnchorCPAttention(torch.autograd.Function):
    """Saves the inputs and the plan, routes to ``ring_forward`` / ``ring_backward``."""

    @staticmethod
    def forward(ctx, q, k, v, plan, comm, backend, scale):
        out, lse, anchor = ring_forward(
            _heads_major(q), _heads_major(k), _heads_major(v), plan, comm, backend, scale
        )
        out = out.to(q.dtype)  # [b, h, s, d]
        ctx.save_for_backward(q, k, v, out, lse, anchor)
        ctx.plan, ctx.comm, ctx.backend, ctx.scale = plan, comm, backend, scale
        return out.permute(2, 0, 1, 3).contiguous()  # [s, b, h, d]

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, anchor = ctx.saved_tensors
        dq, dk, dv = ring_backward(
            _heads_major(dout),
            _heads_major(q),
            _heads_major(k),
            _heads_major(v),
            out,
            lse,
            anchor,
            ctx.plan,
            ctx.comm,
            ctx.backend,
            ctx.scale,
        )
        grads = [g.to(q.dtype).permute(2, 0, 1, 3) for g in (dq, dk, dv)]  # [s, b, h(_kv), d]
        return (*grads, None, None, None, None)


def validate_inputs(q, k, v, doc_ids: torch.Tensor, mode: str, cp_size: int) -> None:
    """Raise ``ValueError`` on any input the attention cannot answer exactly."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        raise ValueError(
            f"expected q [s, b, h, d], k/v [s, b, h_kv, d]; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    s_local, batch, heads, dim = q.shape
    if (k.shape[0], k.shape[1], k.shape[3]) != (s_local, batch, dim) or heads % k.shape[2] != 0:
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)} (GQA needs h % h_kv == 0)")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device; got {q.device}, {k.device}, {v.device}")
    if doc_ids.dtype != torch.int64 or doc_ids.dim() != 2 or doc_ids.shape[0] != batch:
        raise ValueError(f"doc_ids must be int64 [b={batch}, S]; got {doc_ids.dtype} {tuple(doc_ids.shape)}")
    seq_len = doc_ids.shape[1]
    check_divisible(seq_len, cp_size)
    if s_local * cp_size != seq_len:
        raise ValueError(f"local length {s_local} x CP {cp_size} != doc_ids length {seq_len}")
    if bool((doc_ids[:, 0] != 0).any()):
        raise ValueError("doc_ids[:, 0] must be 0: token 0 is the anchor (document 0)")
    if seq_len > 1 and bool((doc_ids[:, 1:] < doc_ids[:, :-1]).any()):
        raise ValueError("doc_ids must be non-decreasing along the sample (documents are contiguous)")


def anchor_cp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor,
    *,
    mode: str = "anchor",
    cp_group: dist.ProcessGroup | None = None,
    softmax_scale: float | None = None,
    backend: str | None = None,
    stats: AttentionStats | None = None,
) -> torch.Tensor:
    """Masked attention of this rank's queries over the whole sample (SPEC sections 1-2).

    q ``[s_local, b, h, d]``, k/v ``[s_local, b, h_kv, d]`` in the load-balanced CP layout, doc_ids
    ``[b, S]`` int64 (same on every rank) -> out ``[s_local, b, h, d]``. ``stats`` accumulates work counters.
    """
    comm = CPComm(cp_group)
    validate_inputs(q, k, v, doc_ids, mode, comm.size)
    comm.check_same(doc_ids)
    kernel = select_backend(backend or os.environ.get(BACKEND_ENV, "auto"), q.device)
    plan = build_ring_plan(doc_ids, comm.size, comm.rank, mode)
    if stats is not None:
        stats.add(plan.stats)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    return _AnchorCPAttention.apply(q, k, v, plan, comm, kernel, scale)
