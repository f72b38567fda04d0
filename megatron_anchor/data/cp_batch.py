"""Cutting a batch of packed samples into one context-parallel rank's share (SPEC section 2)."""

from __future__ import annotations

import torch

from megatron_anchor.parallel.cp_layout import check_divisible, slice_for_cp_rank

FULL_SAMPLE_FIELDS = ("doc_ids",)  # every CP rank needs the whole sample's document layout


def slice_batch_for_cp(batch: dict[str, torch.Tensor], cp_size: int, cp_rank: int) -> dict[str, torch.Tensor]:
    """This CP rank's share of a batch in megatron-core's load-balanced layout.

    Every per-token field ``[b, S]`` (tokens, labels, loss_mask, position_ids, ...) becomes
    ``[b, S / cp_size]``: chunks ``cp_rank`` and ``2*cp_size-1-cp_rank`` of ``2*cp_size``. ``doc_ids``
    stays whole ``[b, S]``: the attention needs every document boundary of the sample on every rank.
    Fields that are not per-token (e.g. ``dataset_id [b]``) are passed through.
    """
    seq_len = batch["tokens"].shape[1]
    check_divisible(seq_len, cp_size)
    sliced = {}
    for name, value in batch.items():
        per_token = isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == seq_len
        if per_token and name not in FULL_SAMPLE_FIELDS:
            value = slice_for_cp_rank(value, 1, cp_size, cp_rank)  # [b, S / cp_size, ...]
        sliced[name] = value
    return sliced
