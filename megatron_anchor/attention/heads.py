"""Grouped-query attention's head mapping, in one place: query head ``j`` uses K/V head ``j // group``."""

from __future__ import annotations

import torch


def expand_kv_heads(t: torch.Tensor, heads: int, dim: int = 1) -> torch.Tensor:
    """K/V with ``h_kv`` heads along ``dim`` -> ``heads`` heads (each repeated ``heads // h_kv`` times)."""
    group = heads // t.shape[dim]
    return t if group == 1 else t.repeat_interleave(group, dim=dim)


def reduce_kv_heads(grad: torch.Tensor, heads_kv: int, dim: int = 1) -> torch.Tensor:
    """The inverse for gradients: ``heads`` heads along ``dim`` -> ``heads_kv``, summing each group."""
    heads = grad.shape[dim]
    if heads == heads_kv:
        return grad
    shape = (*grad.shape[:dim], heads_kv, heads // heads_kv, *grad.shape[dim + 1 :])
    return grad.reshape(shape).sum(dim + 1)
