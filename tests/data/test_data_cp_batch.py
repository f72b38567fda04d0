"""Slicing a batch for a context-parallel rank."""

from __future__ import annotations

import pytest
import torch

from megatron_anchor.data import slice_batch_for_cp
from megatron_anchor.parallel.cp_layout import batch_cp_index, megatron_cp_index, unshard_from_cp


def batch(b: int = 2, s: int = 16) -> dict[str, torch.Tensor]:
    tokens = torch.arange(b * s).reshape(b, s)
    return {
        "tokens": tokens,
        "labels": tokens + 1000,
        "loss_mask": torch.rand(b, s),
        "position_ids": torch.arange(s).expand(b, s),
        "doc_ids": torch.randint(0, 3, (b, s)).sort(dim=1).values,
        "dataset_id": torch.tensor([0, 1]),
    }


@pytest.mark.parametrize("cp_size", [1, 2, 4])
def test_load_balanced_chunks(cp_size):
    full = batch()
    shards = [slice_batch_for_cp(full, cp_size, rank) for rank in range(cp_size)]
    chunk = 16 // (2 * cp_size)
    for rank, shard in enumerate(shards):
        # Rank r holds chunks r and 2*cp-1-r, written out by hand.
        expected = list(range(rank * chunk, (rank + 1) * chunk))
        expected += list(range((2 * cp_size - 1 - rank) * chunk, (2 * cp_size - rank) * chunk))
        assert shard["tokens"][0].tolist() == expected
        assert shard["doc_ids"] is full["doc_ids"]
        assert shard["dataset_id"] is full["dataset_id"]
    index = megatron_cp_index(16, cp_size).expand(2, cp_size, 16 // cp_size)
    for name in ("tokens", "labels", "loss_mask", "position_ids"):
        assert torch.equal(unshard_from_cp([s[name] for s in shards], index), full[name])


@pytest.mark.parametrize("cp_size", [2, 4])
def test_any_layout_keeps_every_token_with_its_label_and_position(cp_size):
    """Under the balanced layout each rank's tokens are its layout's rows, each with its own label,
    loss mask and position, and the shards reassemble the batch exactly."""
    full = batch()
    full["doc_ids"] = torch.tensor([[0] + [1] * 5 + [2] * 10, [0] + [1] * 12 + [2] * 3])
    index = batch_cp_index(full["doc_ids"], cp_size, "balanced")
    shards = [slice_batch_for_cp(full, cp_size, rank, index) for rank in range(cp_size)]
    for rank, shard in enumerate(shards):
        assert torch.equal(shard["tokens"], torch.gather(full["tokens"], 1, index[:, rank]))
        assert torch.equal(shard["labels"], shard["tokens"] + 1000)
    for name in ("tokens", "labels", "loss_mask", "position_ids"):
        assert torch.equal(unshard_from_cp([s[name] for s in shards], index), full[name])


def test_indivisible_length():
    with pytest.raises(ValueError, match="divisible by 2\\*context_parallel_size = 4"):
        slice_batch_for_cp(batch(s=10), 2, 0)
