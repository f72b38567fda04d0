"""Public entry of the anchor attention (interim single-rank version; the ring kernel replaces it)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_anchor.attention.reference import visibility_mask


def anchor_cp_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    doc_ids: torch.Tensor,
    *,
    mode: str = "anchor",
    cp_group: dist.ProcessGroup | None = None,
    softmax_scale: float | None = None,
) -> torch.Tensor:
    """Masked attention of this rank's queries. q ``[s_local, b, h, d]``, k/v ``[s_local, b, h_kv, d]``."""
    if cp_group is not None and dist.get_world_size(cp_group) > 1:
        raise NotImplementedError("ring attention over CP > 1 is not implemented yet")
    heads, heads_kv = q.shape[2], k.shape[2]
    qb, kb, vb = (t.permute(1, 2, 0, 3) for t in (q, k, v))  # [b, h, S, d]
    kb = kb.repeat_interleave(heads // heads_kv, dim=1)
    vb = vb.repeat_interleave(heads // heads_kv, dim=1)
    mask = visibility_mask(doc_ids, mode)[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask, scale=softmax_scale)
    return out.permute(2, 0, 1, 3)
