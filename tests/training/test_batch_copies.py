"""A micro-batch reaches the device by pinned, non-blocking copies: the host never waits for them."""

from __future__ import annotations

import torch

from megatron_anchor.devices import host_to_device
from megatron_anchor.training.batches import CPSlicing, MockPackedDataset, collate, to_model_inputs
from tests.dispatch_recorders import RecordOps, host_copy_blocking


def test_the_four_micro_batch_copies_do_not_block():
    dataset = MockPackedDataset(seq_length=32, vocab_size=64, num_samples=2)
    batch = collate([dataset[0], dataset[1]])
    with RecordOps(host_copy_blocking) as copies:
        inputs = to_model_inputs(batch, CPSlicing(), torch.device("meta"))
    assert copies.seen == [True] * 4  # positions, tokens, labels, loss_mask
    assert inputs["layout"].positions.is_meta and inputs["layout"].doc_ids.device.type == "cpu"
    assert inputs["valid_tokens"] == 64.0  # counted on the host copy


def test_copies_to_cuda_come_from_pinned_memory(monkeypatch):
    """Without a GPU: the spy stands for ``pin_memory`` and ``to`` (the real pair needs CUDA)."""
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda t: calls.append("pin") or t)
    monkeypatch.setattr(torch.Tensor, "to", lambda t, *a, **k: calls.append((str(a[0]), k)) or t)
    host_to_device(torch.zeros(3), torch.device("cuda", 1))
    assert calls == ["pin", ("cuda:1", {"non_blocking": True})]
    calls.clear()
    t = torch.zeros(3)
    assert host_to_device(t, "cpu") is t and calls == []
