"""RoPE position ids of a packed sample from its per-token document ids (SPEC section 1)."""

from __future__ import annotations

import torch

from megatron_anchor.data.position_modes import POSITION_MODES


def position_ids_from_doc_ids(doc_ids: torch.Tensor, mode: str = "global") -> torch.Tensor:
    """Positions ``[..., S]`` int64: ``global`` is the token index; ``reset`` counts 1, 2, ... per document.

    The anchor (token 0, document 0) is position 0 in both modes. ``doc_ids`` must be non-decreasing
    along the last axis, as in a packed sample.
    """
    if mode not in POSITION_MODES:
        raise ValueError(f"unknown position mode {mode!r}; expected one of {POSITION_MODES}")
    seq_len = doc_ids.shape[-1]
    index = torch.arange(seq_len, device=doc_ids.device).expand_as(doc_ids)
    if mode == "global":
        return index.clone()
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    # Index of the first token of each token's document: a running max over document starts.
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    positions = index - first + 1
    positions[..., 0] = 0
    return positions
