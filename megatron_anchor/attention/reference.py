"""Dense fp64 attention over a whole packed sample: the correctness reference for every kernel."""

from __future__ import annotations

import torch

from megatron_anchor.parallel.layout_names import check_mode


def visibility_mask(doc_ids: torch.Tensor, mode: str) -> torch.Tensor:
    """Boolean mask ``[b, S, S]``: True where query i may attend key j (SPEC section 1)."""
    check_mode(mode)
    seq_len = doc_ids.shape[-1]
    causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=doc_ids.device).tril()
    mask = causal.expand(doc_ids.shape[0], seq_len, seq_len)
    if mode == "causal":
        return mask.clone()
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]
    if mode == "anchor":
        same_doc[:, :, 0] = True
    return mask & same_doc


def dense_reference_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor,
    mode: str = "anchor",
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """fp64 dense masked attention. q ``[S, b, h, d]``, k/v ``[S, b, h_kv, d]`` -> ``[S, b, h, d]`` fp64."""
    heads, heads_kv, dim = q.shape[2], k.shape[2], q.shape[3]
    scale = dim**-0.5 if softmax_scale is None else softmax_scale
    q64, k64, v64 = (t.double().permute(1, 2, 0, 3) for t in (q, k, v))  # [b, h, S, d]
    k64 = k64.repeat_interleave(heads // heads_kv, dim=1)
    v64 = v64.repeat_interleave(heads // heads_kv, dim=1)
    scores = torch.einsum("bhid,bhjd->bhij", q64, k64) * scale
    mask = visibility_mask(doc_ids, mode)[:, None]  # [b, 1, S, S]
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.einsum("bhij,bhjd->bhid", scores.softmax(dim=-1), v64)
    return out.permute(2, 0, 1, 3)  # [S, b, h, d]
