"""Public entry of the anchor-aware context-parallel attention, and its autograd Function.

Single process::

    out = anchor_cp_attention(q, k, v, doc_ids)                      # q [S, b, h, d], doc_ids [b, S]

CP ranks, in megatron-core's load-balanced layout (``cp_index=None``) or any other (``cp_index [b, cp, L]``,
e.g. ``megatron_anchor.parallel.batch_cp_index``), the plan built once per micro-batch and reused::

    plan = build_attention_plan(doc_ids, "anchor", cp_size=cp, rank=r, cp_index=index, device=q.device)
    out = anchor_cp_attention(q_local, k_local, v_local, cp_group=group, plan=plan)

``--cp-comm-type a2a`` passes the CP group as ``a2a_group`` (no ring); ``a2a+p2p`` passes the inner group
as ``a2a_group`` and the outer one as ``cp_group``; the plan is then the ring's (``a2a_size=A``).

``MEGATRON_ANCHOR_ATTENTION_BACKEND`` (see ``BACKENDS``) picks the kernel when ``backend`` is not given;
``MEGATRON_ANCHOR_CHECK_DOC_IDS=1`` checks that every rank got the same doc_ids and layout.
"""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from megatron_anchor.attention.backends import select_backend
from megatron_anchor.attention.comm import CPComm
from megatron_anchor.attention.heads import expand_kv_heads
from megatron_anchor.attention.heads_exchange import heads_for_tokens, tokens_for_heads
from megatron_anchor.attention.plan import AttentionPlan, AttentionStats, build_attention_plan
from megatron_anchor.attention.ring import ring_backward, ring_forward
from megatron_anchor.devices import same_device
from megatron_anchor.parallel.comm_types import kv_head_repeat

BACKEND_ENV = "MEGATRON_ANCHOR_ATTENTION_BACKEND"


def pack(t: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """``[L, b, h, d]`` -> ``[b * L, h, d]`` in local order (a view when b = 1 and already in order)."""
    packed = t[:, 0] if t.shape[1] == 1 else t.transpose(0, 1).reshape(-1, *t.shape[2:])
    return packed if plan.order is None else packed.index_select(0, plan.order)


def unpack(t: torch.Tensor, plan: AttentionPlan) -> torch.Tensor:
    """The inverse of ``pack``: ``[b * L, h, d]`` -> ``[L, b, h, d]``."""
    if plan.inverse is not None:
        t = t.index_select(0, plan.inverse)
    return t.view(plan.batch, plan.local_len, *t.shape[1:]).transpose(0, 1)


def _no_autocast(device: torch.device):
    """Autocast switched off for ``device`` (a no-op context where autocast does not exist, e.g. meta)."""
    if not torch.amp.is_autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


class _AnchorCPAttention(torch.autograd.Function):
    """Saves the inputs and the plan, routes to ``ring_forward`` / ``ring_backward``.

    Autocast is switched off inside: the kernels compute in the precision of their inputs (bf16 flash
    kernels accumulate in fp32; the fp32 merges stay fp32), whatever the caller's autocast says.
    """

    @staticmethod
    def forward(ctx, q, k, v, plan, comm, backend, scale, stats):
        with _no_autocast(q.device):
            out, lse, anchor, aux = ring_forward(
                pack(q, plan), pack(k, plan), pack(v, plan), plan, comm, backend, scale, stats
            )
            out = out.to(q.dtype)  # [T, h, d]
        ctx.save_for_backward(q, k, v, out, lse, anchor)
        ctx.plan, ctx.comm, ctx.backend, ctx.scale = plan, comm, backend, scale
        ctx.stats, ctx.aux = stats, aux
        return unpack(out, plan)  # [L, b, h, d]

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse, anchor = ctx.saved_tensors
        plan = ctx.plan
        with _no_autocast(q.device):
            dq, dk, dv = ring_backward(
                pack(dout, plan), pack(q, plan), pack(k, plan), pack(v, plan), out, lse, anchor, ctx.aux,
                plan, ctx.comm, ctx.backend, ctx.scale, ctx.stats,
            )  # fmt: skip
        grads = [unpack(g.to(q.dtype), plan) for g in (dq, dk, dv)]  # [L, b, h(_kv), d]
        return (*grads, None, None, None, None, None)


def check_qkv(q, k, v) -> None:
    """Raise ``ValueError`` unless q ``[s, b, h, d]`` and k/v ``[s, b, h_kv, d]`` fit together."""
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


def validate_inputs(q, k, v, plan: AttentionPlan, comm: CPComm, a2a: CPComm) -> None:
    """Raise ``ValueError`` on inputs that disagree with each other or the plan (shapes only, no reads).

    q, k, v are this CP rank's (before any all-to-all).
    """
    check_qkv(q, k, v)
    s_local, batch = q.shape[:2]
    cp_size = comm.size * a2a.size
    if (plan.batch, plan.local_len * plan.cp_size) != (batch, s_local * cp_size):
        raise ValueError(
            f"local length {s_local} x CP {cp_size} (batch {batch}) does not match "
            f"the plan's sample length {plan.local_len * plan.cp_size} (batch {plan.batch})"
        )
    built_for = (plan.cp_size, plan.rank, plan.a2a_size)
    if built_for != (comm.size, comm.rank, a2a.size) or not same_device(plan.device, q.device):
        raise ValueError(
            f"plan built for ring rank {plan.rank}/{plan.cp_size} after an all-to-all of {plan.a2a_size} on "
            f"{plan.device}, used on ring rank {comm.rank}/{comm.size} after one of {a2a.size} on {q.device}"
        )


def rank_plan(doc_ids, mode: str, ring: CPComm, a2a: CPComm, cp_index, device) -> AttentionPlan:
    """This rank's plan: the ring over ``ring`` after the all-to-all over ``a2a`` (with
    ``MEGATRON_ANCHOR_CHECK_DOC_IDS=1`` both groups check that their ranks got the same doc_ids, layout)."""
    for comm in (ring, a2a):
        comm.check_same(doc_ids, cp_index)
    return build_attention_plan(
        doc_ids, mode, cp_size=ring.size, rank=ring.rank, cp_index=cp_index, device=device, a2a_size=a2a.size
    )


def _scatter_heads(q, k, v, a2a: CPComm) -> tuple[torch.Tensor, ...]:
    """Tokens for heads over the all-to-all group (the K/V heads repeated first where it needs them)."""
    repeat = kv_head_repeat(q.shape[2], k.shape[2], a2a.size)
    if repeat > 1:  # autograd sums the repeated heads' gradients back
        k, v = (expand_kv_heads(t, t.shape[2] * repeat, dim=2) for t in (k, v))
    return heads_for_tokens(q, k, v, a2a.group)  # [A * L, b, h / A, d], [A * L, b, h_kv' / A, d]


def anchor_cp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor | None = None,
    *,
    mode: str = "anchor",
    cp_group: dist.ProcessGroup | None = None,
    a2a_group: dist.ProcessGroup | None = None,
    cp_index: torch.Tensor | None = None,
    plan: AttentionPlan | None = None,
    softmax_scale: float | None = None,
    backend: str | object | None = None,
    stats: AttentionStats | None = None,
) -> torch.Tensor:
    """Masked attention of this rank's queries over the whole sample (SPEC sections 1-2).

    q ``[s_local, b, h, d]``, k/v ``[s_local, b, h_kv, d]`` in the layout ``cp_index [b, cp, s_local]``
    (None: megatron-core's), doc_ids ``[b, S]`` int64 (the same on every rank) -> out ``[s_local, b, h, d]``.
    ``a2a_group`` (A ranks): tokens are exchanged for heads before the ring over ``cp_group`` (P ranks)
    and back after it; CP rank ``p * A + i`` is rank ``i`` of its ``a2a_group`` and ``p`` of its
    ``cp_group``. A prebuilt ``plan`` replaces doc_ids, mode and cp_index. ``backend``: a name of
    ``BACKENDS`` or a kernel object with the contract of ``backends.py``. ``stats`` accumulates counters.
    """
    comm, a2a = CPComm(cp_group, q.device), CPComm(a2a_group, q.device)
    if plan is None:
        if doc_ids is None:
            raise ValueError("anchor_cp_attention needs doc_ids [b, S] or a prebuilt plan")
        plan = rank_plan(doc_ids, mode, comm, a2a, cp_index, q.device)
    validate_inputs(q, k, v, plan, comm, a2a)
    scale = q.shape[-1] ** -0.5 if softmax_scale is None else softmax_scale
    if a2a.size > 1:
        q, k, v = _scatter_heads(q, k, v, a2a)
    kernel = select_backend(backend or os.environ.get(BACKEND_ENV, "auto"), q.device, q.dtype, q.shape[-1])
    counters = AttentionStats() if stats is None else stats
    counters.add(plan.stats)
    out = _AnchorCPAttention.apply(q, k, v, plan, comm, kernel, scale, counters)
    return tokens_for_heads(out, a2a.group) if a2a.size > 1 else out
