"""What the attention costs the host: one plan per micro-batch, no device reads, autocast-proof precision."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from megatron.core.transformer.transformer_layer import TransformerLayer
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    apply_activation_checkpointing,
    checkpoint_wrapper,
)

import megatron_anchor.attention.cp_attention as cp_attention_module
from megatron_anchor.attention import anchor_cp_attention, build_attention_plan, dense_reference_attention
from megatron_anchor.data import position_ids_from_doc_ids
from megatron_anchor.model import AnchorGPTConfig, AnchorLayout, build_anchor_gpt
from tests.dispatch_recorders import RecordOps, host_read

CFG = AnchorGPTConfig(
    num_layers=3, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
    vocab_size=128, seq_length=48,
)  # fmt: skip
DOC_IDS = torch.tensor([[0] + [1] * 20 + [2] * 5 + [3] * 22, [0] + [1] * 3 + [2] * 44])


def _layout() -> AnchorLayout:
    return AnchorLayout(doc_ids=DOC_IDS, positions=position_ids_from_doc_ids(DOC_IDS))


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_the_plan_is_built_once_per_micro_batch(monkeypatch, recompute):
    builds = []
    build = cp_attention_module.build_attention_plan
    counted = lambda *a, **k: builds.append(1) or build(*a, **k)  # noqa: E731
    monkeypatch.setattr(cp_attention_module, "build_attention_plan", counted)
    torch.manual_seed(0)
    model = build_anchor_gpt(dataclasses.replace(CFG, recompute_attention=recompute == "selective"))
    if recompute == "full":
        check = lambda m: isinstance(m, TransformerLayer)  # noqa: E731
        apply_activation_checkpointing(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=check)
    tokens = torch.randint(0, 128, (2, 48))
    for micro_batch in range(2):
        model(tokens, tokens, _layout()).sum().backward()
        assert len(builds) == micro_batch + 1  # 3 layers, forward, backward and any recompute: one build


@pytest.mark.parametrize("backend", ["varlen_reference", "sdpa_cpu"])
def test_a_layer_with_its_plan_reads_nothing_back(backend, monkeypatch):
    monkeypatch.setenv("MEGATRON_ANCHOR_ATTENTION_BACKEND", backend)
    torch.manual_seed(1)
    model = build_anchor_gpt(CFG)
    core = model.decoder.layers[0].self_attention.core_attention
    layout = _layout()
    layout.attention_plan(core.setup.mode, core.cp_group, torch.device("cpu"))  # the micro-batch's plan
    layout.rope_angles(core.setup.inv_freq)  # and its angle table, as the first layer builds them
    q = torch.randn(48, 2, 4, 16, requires_grad=True)
    k, v = (torch.randn(48, 2, 2, 16, requires_grad=True) for _ in range(2))
    with RecordOps(host_read) as mode:
        core(q, k, v, None, packed_seq_params=layout).sum().backward()
    assert mode.seen == []


def test_the_attention_runs_on_meta_tensors():
    """With a prebuilt plan nothing can read a value: on the meta device any read would raise."""
    plan = build_attention_plan(DOC_IDS, "anchor", device="meta")
    q = torch.empty(48, 2, 4, 16, device="meta", requires_grad=True)
    k, v = (torch.empty(48, 2, 2, 16, device="meta", requires_grad=True) for _ in range(2))
    out = anchor_cp_attention(q, k, v, plan=plan, backend="varlen_reference")
    out.sum().backward()
    assert out.shape == q.shape and k.grad.shape == k.shape


@pytest.mark.parametrize("backend", ["torch", "varlen_reference", "sdpa_cpu"])
def test_autocast_changes_nothing_inside_the_attention(backend):
    torch.manual_seed(2)
    q = torch.randn(48, 2, 4, 16).bfloat16()
    k, v = (torch.randn(48, 2, 2, 16).bfloat16() for _ in range(2))
    dout = torch.randn(48, 2, 4, 16).bfloat16()
    results = []
    for enabled in (False, True):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out = anchor_cp_attention(*inputs, DOC_IDS, backend=backend)
            out.backward(dout)
        results.append([out, *(t.grad for t in inputs)])
    for plain, autocast in zip(*results):
        assert torch.equal(plain, autocast)
    ref = dense_reference_attention(q, k, v, DOC_IDS)
    assert (results[1][0].double() - ref).abs().max() / ref.abs().max() < 2e-2
