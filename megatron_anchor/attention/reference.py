"""Dense fp64 attention over a whole packed sample: the correctness reference for every kernel."""

from __future__ import annotations

import torch

from megatron_anchor.attention.modes import ATTENTION_MODES


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


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of ``ATTENTION_MODES``."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")


def check_doc_ids(doc_ids: torch.Tensor, name: str = "doc_ids", dim: int = 2) -> None:
    """Raise unless ``doc_ids`` (``[b, S]``, or one sample ``[S]`` with ``dim=1``) is int64, starts every
    sample with the anchor's document 0 and never decreases; the message names the first bad value."""
    shape = "[S]" if dim == 1 else "[b, S]"
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dtype != torch.int64 or doc_ids.dim() != dim:
        has_shape = hasattr(doc_ids, "shape")
        got = f"{doc_ids.dtype} {list(doc_ids.shape)}" if has_shape else type(doc_ids).__name__
        raise ValueError(f"{name} must be a {dim}-D int64 tensor {shape} of document ids; got {got}")
    rows = doc_ids.reshape(-1, doc_ids.shape[-1])  # [b, S]
    where = (lambda b, i: f"{name}[{i}]") if dim == 1 else (lambda b, i: f"{name}[{b}, {i}]")
    if rows.shape[1] == 0:
        raise ValueError(f"{name} is empty: a sample holds at least the anchor")
    starts = torch.nonzero(rows[:, 0] != 0)
    if len(starts):
        b = int(starts[0, 0])
        got = int(rows[b, 0])
        raise ValueError(f"{where(b, 0)} must be 0 (token 0 is the anchor, document 0); got {got}")
    drops = torch.nonzero(rows[:, 1:] < rows[:, :-1])
    if len(drops):
        b, i = int(drops[0, 0]), int(drops[0, 1]) + 1
        raise ValueError(
            f"{name} must be non-decreasing (documents are contiguous); "
            f"{where(b, i)} = {int(rows[b, i])} follows {int(rows[b, i - 1])}"
        )


def visible_keys_per_query(doc_ids: torch.Tensor, mode: str) -> torch.Tensor:
    """Row sums of ``visibility_mask`` in closed form: int64 ``[..., S]``, the keys each query sees.

    This is the attention work of each query; layouts balance it and throughput counts it.
    """
    check_mode(mode)
    index = torch.arange(doc_ids.shape[-1], device=doc_ids.device).expand_as(doc_ids)
    if mode == "causal":
        return index + 1
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    # First token of each token's document: a running max over the document starts.
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    count = index - first + 1
    if mode == "anchor":  # queries outside the anchor's document see it as one more key
        count = count + (doc_ids != doc_ids[..., :1]).long()
    return count


def visible_pairs(doc_ids: torch.Tensor, mode: str) -> int:
    """(query, key) pairs the attention mask keeps, summed over the batch ``doc_ids [b, S]``."""
    return int(visible_keys_per_query(doc_ids, mode).sum())


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
