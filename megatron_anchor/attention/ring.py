"""Forward and backward of the anchor-aware ring attention as plain functions over one rank's packed rows.

Tensors are packed in local order: q ``[T, h, d]``, k/v ``[T, h_kv, d]`` (``T = b * L``). Step 0 attends the
local K/V; step ``s`` the rows rank ``rank - s`` sent (only those some local query needs), with step
``s + 1`` already in flight. Each step makes the plan's kernel calls (one per level: one for the megatron
and balanced layouts) and merges their partial results into fp32 ``out``/``lse`` branch-free. In backward
the K/V travel again (not kept from forward) and the remote dK/dV go straight back to their owner (two
steps' replies in flight at most). The anchor's K/V arrive once, summed over the group, and fold in last.
Nothing here reads a value back from the device.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from megatron_anchor.attention.anchor import fold_anchor, fold_anchor_backward, local_anchor_kv
from megatron_anchor.attention.comm import CPComm, Pending
from megatron_anchor.attention.merge import merge_rows, take
from megatron_anchor.attention.plan import AttentionPlan, AttentionStats, Rows


def add_rows(t: torch.Tensor, rows: Rows, values: torch.Tensor) -> None:
    """In place ``t[rows] += values`` (rows of one call are distinct)."""
    if isinstance(rows, slice):
        t[rows] += values
    else:
        t.index_add_(0, rows, values.to(t.dtype))


def _post_kv(comm: CPComm, plan: AttentionPlan, step: int, k, v) -> Pending | None:
    """Put step ``step``'s K/V rows ``[2, n, h_kv, d]`` in flight (None past the last step)."""
    if step >= comm.size:
        return None
    sp = plan.steps[step]
    send = None
    if sp.send_rows is not None:
        send = torch.stack([k.index_select(0, sp.send_rows), v.index_select(0, sp.send_rows)])
    shape = (2, sp.recv_rows, *k.shape[1:]) if sp.recv_rows else None
    return comm.exchange(step, send, shape, k)


def key_buffers(comm: CPComm, plan: AttentionPlan, k, v) -> Iterator[tuple[int, tuple | None]]:
    """Yield ``(step, (k, v) or None)`` for every ring step, the next step's rows in flight meanwhile."""
    pending = _post_kv(comm, plan, 1, k, v)
    yield 0, (k, v)
    for step in range(1, comm.size):
        received = pending.wait()
        pending = _post_kv(comm, plan, step + 1, k, v)
        yield step, None if received is None else tuple(received.unbind(0))


def ring_forward(q, k, v, plan: AttentionPlan, comm: CPComm, backend, scale: float, stats: AttentionStats):
    """Attention of the local queries over every visible key of the sample.

    Returns (out ``[T, h, d]`` fp32, lse ``[h, T]`` fp32, anchor K/V ``[2, b, h_kv, d]`` or None, the
    kernels' per-call data for the backward).
    """
    anchor, anchor_work = None, None
    if plan.anchor is not None:
        anchor, anchor_work = comm.sum_anchor(local_anchor_kv(k, v, plan.anchor), async_op=True)
    out = lse = None
    aux = []
    for step, kv in key_buffers(comm, plan, k, v):
        for call in plan.steps[step].calls if kv is not None else ():
            keys, values = take(kv[0], call.k_rows), take(kv[1], call.k_rows)
            part_out, part_lse, data = backend.forward(take(q, call.q_rows), keys, values, call, scale)
            if out is None:  # ring step 0's one call covers every local row: it starts the result
                out, lse = part_out.float().contiguous(), part_lse.float()  # folded into in place
            else:
                merge_rows(out, lse, call.q_rows, part_out, part_lse)
            aux.append(data)
            stats.kernel_calls_forward += 1
    if anchor is not None:
        if anchor_work is not None:
            anchor_work.wait()
        fold_anchor(q, out, lse, anchor, plan.anchor, scale)
    return out, lse, anchor, aux


def _call_grads(backend, dout, q, kv, out, lse, call, scale, aux, stats) -> tuple:
    """(dq, dk, dv) of one kernel call: of its query rows and of its rows of the key buffer ``kv``."""
    rows = call.q_rows
    grads = backend.backward(
        take(dout, rows), take(q, rows), take(kv[0], call.k_rows), take(kv[1], call.k_rows),
        take(out, rows), take(lse, rows, dim=1), call, scale, aux,
    )  # fmt: skip
    stats.kernel_calls_backward += 1
    return grads


def ring_backward(dout, q, k, v, out, lse, anchor, aux, plan: AttentionPlan, comm, backend, scale, stats):
    """Gradients of ``ring_forward``: (dq ``[T, h, d]``, dk, dv ``[T, h_kv, d]``), fp32.

    ``out`` (q's dtype) and ``lse`` are the forward's final, merged values; ``aux`` its per-call data.
    """
    aux_iter = iter(aux)
    in_flight: tuple[Pending, torch.Tensor] | None = None  # the previous step's reply: two buffers at most
    for step, kv in key_buffers(comm, plan, k, v):
        sp = plan.steps[step]
        if step == 0:  # the one local call covers every row: its gradients start the result
            (call,) = sp.calls
            grads = _call_grads(backend, dout, q, kv, out, lse, call, scale, next(aux_iter), stats)
            dq, dk, dv = (g.float().contiguous() for g in grads)  # accumulated into in place
            continue
        buffer = None
        if kv is not None:
            buffer = torch.zeros((2, *kv[0].shape), dtype=torch.float32, device=k.device)  # [2, n, h_kv, d]
            for call in sp.calls:
                grads = _call_grads(backend, dout, q, kv, out, lse, call, scale, next(aux_iter), stats)
                add_rows(dq, call.q_rows, grads[0])
                add_rows(buffer[0], call.k_rows, grads[1])
                add_rows(buffer[1], call.k_rows, grads[2])
        if sp.recv_rows or sp.send_rows is not None:
            shape = None if sp.send_rows is None else (2, len(sp.send_rows), *k.shape[1:])
            posted = (comm.reply(step, buffer, shape, dk), sp.send_rows)
            _add_reply(dk, dv, in_flight)
            in_flight = posted
    if anchor is not None:
        anchor_grad = fold_anchor_backward(dout, q, out, lse, anchor, plan.anchor, scale, dq)
        anchor_grad, _ = comm.sum_anchor(anchor_grad)
        owned = anchor_grad * plan.anchor.owned[None, :, None, None]
        dk.index_add_(0, plan.anchor.token0_rows, owned[0])
        dv.index_add_(0, plan.anchor.token0_rows, owned[1])
    _add_reply(dk, dv, in_flight)
    return dq, dk, dv


def _add_reply(dk: torch.Tensor, dv: torch.Tensor, reply: tuple[Pending, torch.Tensor] | None) -> None:
    """Wait for a step's dK/dV exchange (ours sent, the peer's received) and add what came to our rows."""
    if reply is None:
        return
    received = reply[0].wait()
    if received is not None:
        dk.index_add_(0, reply[1], received[0])
        dv.index_add_(0, reply[1], received[1])
