"""Forward and backward of the anchor-aware ring attention as plain functions over one rank's shard.

Tensors here are head-major: q ``[b, h, s_local, d]``, k/v ``[b, h_kv, s_local, d]``. Step 0 uses the local
K/V; step ``s`` the rows that rank ``rank - s`` sent (only those some local query needs), with step
``s + 1`` already in flight. In backward the K/V travel again (not kept from forward) and the remote
dK/dV go straight back to their owner. The anchor's K/V arrive once by broadcast and fold in last.
"""

from __future__ import annotations

import torch

from megatron_anchor.attention.backends import merge_partial
from megatron_anchor.attention.comm import CPComm, Pending
from megatron_anchor.attention.plan import RingPlan, Tile


def _expand(t: torch.Tensor, heads: int) -> torch.Tensor:
    """``[.., h_kv, n, d]`` -> ``[.., h, n, d]`` (GQA: query head j uses K/V head j // group)."""
    group = heads // t.shape[-3]
    return t if group == 1 else t.repeat_interleave(group, dim=-3)


def _reduce_heads(grad: torch.Tensor, heads_kv: int) -> torch.Tensor:
    """``[.., h, n, d]`` -> ``[.., h_kv, n, d]``: sum the gradients of each K/V head's group."""
    *lead, h, n, d = grad.shape
    return grad if h == heads_kv else grad.view(*lead, heads_kv, h // heads_kv, n, d).sum(-3)


def _suffixes(t: torch.Tensor, rows: tuple[int, ...], chunk_len: int) -> torch.Tensor:
    """The last ``rows[i]`` rows of each local chunk of ``t [.., s_local, d]``, concatenated."""
    parts = [t[..., (i + 1) * chunk_len - n : (i + 1) * chunk_len, :] for i, n in enumerate(rows)]
    return torch.cat(parts, dim=-2)


def _add_suffixes(t: torch.Tensor, rows: tuple[int, ...], chunk_len: int, values: torch.Tensor) -> None:
    """In place: the inverse of ``_suffixes``, adding ``values`` onto those rows of ``t``."""
    offset = 0
    for i, n in enumerate(rows):
        t[..., (i + 1) * chunk_len - n : (i + 1) * chunk_len, :] += values[..., offset : offset + n, :]
        offset += n


def _post_kv(comm: CPComm, plan: RingPlan, step: int, k: torch.Tensor, v: torch.Tensor) -> Pending | None:
    """Put step ``step``'s K/V rows ``[2, b, h_kv, n, d]`` in flight (None past the last step)."""
    if step >= comm.size:
        return None
    sp = plan.steps[step]
    send = torch.stack([_suffixes(t, sp.send_rows, plan.chunk_len) for t in (k, v)])
    return comm.exchange(step, send, (2, *k.shape[:2], sum(sp.recv_rows), k.shape[-1]), k)


def _key_buffers(comm: CPComm, plan: RingPlan, k: torch.Tensor, v: torch.Tensor):
    """Yield ``(step, (k, v) or None)`` for every ring step, the next step's rows in flight meanwhile."""
    pending = _post_kv(comm, plan, 1, k, v)
    yield 0, (k, v)
    for step in range(1, comm.size):
        received = pending.wait()
        pending = _post_kv(comm, plan, step + 1, k, v)
        yield step, None if received is None else tuple(received.unbind(0))


def _forward_tiles(backend, q, kv, tiles: list[list[Tile]], scale, out, lse) -> None:
    """Run every tile of one key buffer ``(k, v)`` ``[b, h, n, d]`` and merge into ``out``/``lse``."""
    for b, per_sample in enumerate(tiles):
        for t in per_sample:
            rows = (slice(b, b + 1), slice(None), slice(t.q0, t.q1))
            keys = (slice(b, b + 1), slice(None), slice(t.k0, t.k1))
            part_out, part_lse = backend.forward(q[rows], kv[0][keys], kv[1][keys], t.kind, t.mask, scale)
            merge_partial(out[rows], lse[rows], part_out, part_lse)


def ring_forward(q, k, v, plan: RingPlan, comm: CPComm, backend, scale: float):
    """Attention of the local queries over every visible key of the sample.

    q ``[b, h, s, d]``, k/v ``[b, h_kv, s, d]`` -> (out ``[b, h, s, d]`` fp32, lse ``[b, h, s]`` fp32,
    anchor K/V ``[2, b, h_kv, 1, d]`` or None).
    """
    heads = q.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    lse = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
    anchor, anchor_work = None, None
    if plan.anchor_tiles is not None:
        anchor, anchor_work = comm.broadcast_anchor(torch.stack([k[:, :, :1], v[:, :, :1]]))
    for step, kv in _key_buffers(comm, plan, k, v):
        if kv is not None:
            kv = tuple(_expand(t, heads) for t in kv)
            _forward_tiles(backend, q, kv, plan.steps[step].tiles, scale, out, lse)
    if anchor is not None:
        if anchor_work is not None:
            anchor_work.wait()
        _forward_tiles(backend, q, _expand(anchor, heads).unbind(0), plan.anchor_tiles, scale, out, lse)
    return out, lse, anchor


def _grad_of_buffer(backend, dout, q, kv, out, lse, tiles, scale, dq) -> torch.Tensor:
    """dK/dV ``[2, b, h_kv, n, d]`` fp32 of one buffer ``(k, v)`` ``[b, h_kv, n, d]``; dQ goes into ``dq``."""
    heads, heads_kv = q.shape[1], kv[0].shape[1]
    k, v = (_expand(t, heads) for t in kv)
    dkv = torch.zeros((2, *k.shape), dtype=torch.float32, device=k.device)  # [2, b, h, n, d]
    for b, per_sample in enumerate(tiles):
        for t in per_sample:
            rows = (slice(b, b + 1), slice(None), slice(t.q0, t.q1))
            keys = (slice(b, b + 1), slice(None), slice(t.k0, t.k1))
            grads = backend.backward(
                dout[rows], q[rows], k[keys], v[keys], out[rows], lse[rows], t.kind, t.mask, scale
            )
            dq[rows] += grads[0]
            dkv[0][keys] += grads[1]
            dkv[1][keys] += grads[2]
    return _reduce_heads(dkv, heads_kv)


def ring_backward(dout, q, k, v, out, lse, anchor, plan: RingPlan, comm: CPComm, backend, scale: float):
    """Gradients of ``ring_forward``: (dq ``[b, h, s, d]``, dk, dv ``[b, h_kv, s, d]``), fp32.

    ``out`` (as returned, q's dtype) and ``lse`` are the forward's final, merged values.
    """
    dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
    dkv = None
    replies: list[tuple[Pending, tuple[int, ...]]] = []
    for step, kv in _key_buffers(comm, plan, k, v):
        sp = plan.steps[step]
        grad = None if kv is None else _grad_of_buffer(backend, dout, q, kv, out, lse, sp.tiles, scale, dq)
        if step == 0:
            dkv = grad
        elif sum(sp.recv_rows) or sum(sp.send_rows):
            shape = (2, *k.shape[:2], sum(sp.send_rows), k.shape[-1])
            replies.append((comm.reply(step, grad, shape, dkv), sp.send_rows))
    if anchor is not None:
        anchor_grad = _grad_of_buffer(
            backend, dout, q, anchor.unbind(0), out, lse, plan.anchor_tiles, scale, dq
        )
        anchor_grad = comm.reduce_anchor(anchor_grad)
        if comm.rank == 0:
            dkv[..., :1, :] += anchor_grad
    for reply, send_rows in replies:
        received = reply.wait()
        if received is not None:
            _add_suffixes(dkv, send_rows, plan.chunk_len, received)
    return dq, dkv[0], dkv[1]
