"""Cutting a batch of packed samples into one context-parallel rank's share (SPEC section 2)."""

from __future__ import annotations

import torch

from megatron_anchor.parallel.cp_layout import megatron_cp_index, shard_for_cp

FULL_SAMPLE_FIELDS = ("doc_ids",)  # every CP rank needs the whole sample's document layout


def slice_batch_for_cp(
    batch: dict[str, torch.Tensor], cp_size: int, cp_rank: int, cp_index: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """This CP rank's share of a batch in the layout ``cp_index [b, cp, S / cp]`` (None: megatron-core's).

    Every per-token field ``[b, S]`` (tokens, labels, loss_mask, position_ids, ...) becomes
    ``[b, S / cp_size]`` in the rank's local order, so each token keeps its label, loss mask and global
    RoPE position whatever rank holds it. ``doc_ids`` stays whole ``[b, S]``: the attention needs every
    document boundary of the sample on every rank. Fields that are not per-token (e.g. ``dataset_id [b]``)
    are passed through.
    """
    if cp_index is None and cp_size == 1:
        return dict(batch)  # one rank holds the whole sample in order: nothing to copy
    batch_size, seq_len = batch["tokens"].shape[:2]
    if cp_index is None:
        cp_index = megatron_cp_index(seq_len, cp_size, batch_size)
    sliced = {}
    for name, value in batch.items():
        per_token = isinstance(value, torch.Tensor) and value.dim() >= 2 and value.shape[1] == seq_len
        if per_token and name not in FULL_SAMPLE_FIELDS:
            value = shard_for_cp(value, cp_index, cp_rank)  # [b, S / cp_size, ...]
        sliced[name] = value
    return sliced
