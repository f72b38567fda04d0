"""RoPE's inverse frequencies stay on the device: no host-to-device copy per micro-batch."""

from __future__ import annotations

import pytest
import torch

from megatron_anchor.data import position_ids_from_doc_ids
from megatron_anchor.model import AnchorGPTConfig, AnchorLayout, build_anchor_gpt
from tests.dispatch_recorders import RecordOps, device_copy

CFG = AnchorGPTConfig(
    num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
    vocab_size=128, seq_length=24,
)  # fmt: skip
DOC_IDS = torch.tensor([[0] + [1] * 10 + [2] * 13])


def test_each_micro_batch_after_the_first_copies_nothing_to_the_device(monkeypatch):
    """On the meta device (any copy from the host shows as a cpu+meta op): every layer of every micro-batch
    reads the one device copy of ``inv_freq`` made at the first."""
    monkeypatch.setenv("MEGATRON_ANCHOR_ATTENTION_BACKEND", "varlen_reference")
    torch.manual_seed(0)
    layers = build_anchor_gpt(CFG).decoder.layers
    cores = [layer.self_attention.core_attention for layer in layers]
    q = torch.empty(24, 1, 4, 16, device="meta")
    k = v = torch.empty(24, 1, 2, 16, device="meta")
    copies = []
    for _ in range(3):  # micro-batches
        positions = position_ids_from_doc_ids(DOC_IDS).to("meta")  # made on the device by the batch path
        layout = AnchorLayout(doc_ids=DOC_IDS, positions=positions)
        layout.attention_plan(cores[0].setup.mode, cores[0].cp_group, torch.device("meta"))  # host arrays in
        with RecordOps(device_copy) as mode:
            for core in cores:
                core(q, k, v, None, packed_seq_params=layout)
        copies.append(mode.seen)
    assert copies[1:] == [[], []], copies
    assert len(cores[0].setup._on_device) == 1  # the layers share one setup: one copy per run


def test_the_angle_table_refuses_frequencies_left_on_the_host():
    layout = AnchorLayout(doc_ids=DOC_IDS, positions=position_ids_from_doc_ids(DOC_IDS).to("meta"))
    with pytest.raises(ValueError, match="inv_freq is on cpu, the positions on meta"):
        layout.rope_angles(torch.ones(8, dtype=torch.float64))
