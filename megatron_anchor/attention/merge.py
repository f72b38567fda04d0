"""The log-sum-exp merge of partial attention results into fp32 ``out``/``lse``, in place: one rule for the
ring (its steps) and the CPU kernel (its tiles)."""

from __future__ import annotations

import torch

from megatron_anchor.attention.plan import Rows


def take(t: torch.Tensor, rows: Rows, dim: int = 0) -> torch.Tensor:
    """Rows of ``t`` along ``dim``: a view for a slice, a gather for an index tensor."""
    if isinstance(rows, slice):
        return t[rows] if dim == 0 else t[:, rows]
    return t.index_select(dim, rows)


def finite_lse(lse: torch.Tensor) -> torch.Tensor:
    """fp32 ``lse``, 0 on rows that see no key (-inf): a backward's ``exp(s - lse)`` is then 0, not NaN."""
    return lse.float().masked_fill(torch.isneginf(lse), 0.0)


def merge_weights(old_lse: torch.Tensor, part_lse: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(new_lse [h, n], w_old [n, h, 1], w_new [n, h, 1])`` of merging two normalised partial results.

    Branch-free: a row not seen yet (lse -inf) takes the part; exp(-inf - finite) = 0.
    """
    new_lse = torch.logaddexp(old_lse, part_lse)
    safe = new_lse.masked_fill(new_lse.isinf(), 0.0)
    w_old, w_new = (torch.exp(x - safe).t()[..., None] for x in (old_lse, part_lse))
    return new_lse, w_old, w_new


def merge_rows(out: torch.Tensor, lse: torch.Tensor, rows: Rows, part_out, part_lse) -> None:
    """Fold a normalised partial result of ``rows`` into ``out [T, h, d]``, ``lse [h, T]`` (fp32) in place."""
    old_out, old_lse = take(out, rows), take(lse, rows, dim=1)
    new_lse, w_old, w_new = merge_weights(old_lse, part_lse)
    merged = old_out.mul_(w_old).addcmul_(part_out.float(), w_new)  # in place: a view or a gathered copy
    if isinstance(rows, slice):
        old_lse.copy_(new_lse)
    else:
        out.index_copy_(0, rows, merged)
        lse.index_copy_(1, rows, new_lse)
