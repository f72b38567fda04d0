"""The anchor as one key in closed form: its score ``q . k_anchor``, its value ``v_anchor``, no kernel call.

Rows outside the anchor's document fold it into their softmax with the log-sum-exp merge; the backward
gives dq of those rows and the anchor's dK/dV, which every rank sums back to the owner of token 0.
Tensors are packed ``[T, h, d]`` (``T = b * L`` rows, sample-major); anchor K/V are ``[2, b, h_kv, d]``.
"""

from __future__ import annotations

import torch

from megatron_anchor.attention.heads import expand_kv_heads, reduce_kv_heads
from megatron_anchor.attention.merge import merge_weights
from megatron_anchor.attention.plan import AnchorFold


def local_anchor_kv(k: torch.Tensor, v: torch.Tensor, fold: AnchorFold) -> torch.Tensor:
    """``[2, b, h_kv, d]`` fp32: this rank's token-0 K/V for the samples it holds token 0 of, else zeros."""
    kv = torch.stack([k.index_select(0, fold.token0_rows), v.index_select(0, fold.token0_rows)]).float()
    return kv * fold.owned[None, :, None, None]


def _per_row(anchor_kv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of the anchor ``[b, 1, h, d]`` fp32 (query head j uses K/V head j // group)."""
    k, v = (expand_kv_heads(t, heads)[:, None] for t in anchor_kv.unbind(0))  # [b, 1, h, d]
    return k, v


def _scores(q: torch.Tensor, k_anchor: torch.Tensor, fold: AnchorFold, scale: float) -> torch.Tensor:
    """``[h, T]`` fp32 logits of every row against the anchor, -inf on rows that do not see it."""
    batch = k_anchor.shape[0]
    q4 = q.view(batch, -1, *q.shape[1:])  # [b, L, h, d]
    s = torch.einsum("blhd,bhd->blh", q4.float(), k_anchor[:, 0]) * scale  # batched over (b, h): no expand
    return s.reshape(-1, q.shape[1]).masked_fill(~fold.rows[:, None], float("-inf")).t()


def fold_anchor(q, out, lse, anchor_kv, fold: AnchorFold, scale: float) -> None:
    """In place: merge the anchor into ``out [T, h, d]`` and ``lse [h, T]`` (fp32) of the rows that see it."""
    k_anchor, v_anchor = _per_row(anchor_kv, q.shape[1])
    score = _scores(q, k_anchor, fold, scale)  # [h, T]
    new_lse, w_old, w_new = merge_weights(lse, score)  # w: [T, h, 1]
    batch = k_anchor.shape[0]
    out4 = out.view(batch, -1, *out.shape[1:])  # [b, L, h, d]: one pass, no [T, h, d] temporary
    out4.mul_(w_old.view(batch, -1, *w_old.shape[1:])).addcmul_(w_new.view(out4.shape[:3] + (1,)), v_anchor)
    lse.copy_(new_lse)


def fold_anchor_backward(dout, q, out, lse, anchor_kv, fold: AnchorFold, scale: float, dq) -> torch.Tensor:
    """Adds the anchor's share to ``dq [T, h, d]`` fp32; returns its ``[2, b, h_kv, d]`` dK/dV (fp32)."""
    heads, heads_kv = q.shape[1], anchor_kv.shape[2]
    k_anchor, v_anchor = _per_row(anchor_kv, heads)
    batch = k_anchor.shape[0]
    p = torch.exp(_scores(q, k_anchor, fold, scale) - lse).t().reshape(batch, -1, heads)  # [b, L, h]
    dout4, q4 = (t.view(batch, -1, heads, t.shape[-1]).float() for t in (dout, q))  # [b, L, h, d]
    delta = (dout4 * out.view(dout4.shape).float()).sum(-1)  # [b, L, h]
    ds = p * (torch.einsum("blhd,bhd->blh", dout4, v_anchor[:, 0]) - delta)
    dq.view(dout4.shape).addcmul_(ds[..., None], k_anchor, value=scale)
    dk = torch.einsum("blh,blhd->bhd", ds, q4) * scale  # [b, h, d]
    dv = torch.einsum("blh,blhd->bhd", p, dout4)
    return reduce_kv_heads(torch.stack([dk, dv]), heads_kv, dim=2)  # [2, b, h_kv, d]
