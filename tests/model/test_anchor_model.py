"""The anchor GPT model on one process: core attention against fp64 references, layout path, model shape."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from megatron.core.models.gpt import GPTModel

from megatron_anchor.attention import dense_reference_attention
from megatron_anchor.data import position_ids_from_doc_ids
from megatron_anchor.model import AnchorCoreAttention, AnchorGPTConfig, AnchorLayout, build_anchor_gpt

CFG = AnchorGPTConfig(
    num_layers=2,
    hidden_size=64,
    ffn_hidden_size=128,
    num_attention_heads=4,
    num_query_groups=2,
    vocab_size=128,
    seq_length=32,
)


def _model(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_anchor_gpt(dataclasses.replace(CFG, **changes))


def _doc_ids(b: int = 2, s: int = 32) -> torch.Tensor:
    doc = torch.zeros(b, s, dtype=torch.long)
    doc[0, 1:12], doc[0, 12:] = 1, 2
    doc[1, 1:5], doc[1, 5:20], doc[1, 20:] = 1, 2, 3
    return doc


def _layout(doc_ids: torch.Tensor, positions: str = "global", shift: int = 0) -> AnchorLayout:
    return AnchorLayout(doc_ids=doc_ids, positions=position_ids_from_doc_ids(doc_ids, positions) + shift)


def _rope_fp64(t: torch.Tensor, positions: torch.Tensor, rotary_dim: int, base: float) -> torch.Tensor:
    """Independent fp64 rotate-half RoPE of the first ``rotary_dim`` channels; t [s, b, h, d]."""
    inv = base ** -(torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    ang = positions.double().T[..., None, None] * inv  # [s, b, 1, d_rot/2]
    x = t.double()
    x1, x2, rest = x[..., : rotary_dim // 2], x[..., rotary_dim // 2 : rotary_dim], x[..., rotary_dim:]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x2 * ang.cos() + x1 * ang.sin(), rest], dim=-1)


@pytest.mark.parametrize("mode", ["anchor", "intra_doc", "causal"])
@pytest.mark.parametrize("rotary_percent, positions", [(1.0, "global"), (0.5, "reset")])
def test_core_attention_is_fp32_rope_then_masked_attention(mode, rotary_percent, positions):
    model = _model(attention_mode=mode, rotary_percent=rotary_percent, rotary_base=500.0)
    core = model.decoder.layers[0].self_attention.core_attention
    assert isinstance(core, AnchorCoreAttention)
    torch.manual_seed(1)
    q, k, v = torch.randn(32, 2, 4, 16), torch.randn(32, 2, 2, 16), torch.randn(32, 2, 2, 16)
    layout = _layout(_doc_ids(), positions)
    out = core(q, k, v, None, packed_seq_params=layout)  # [s, b, h*d]
    rot = int(16 * rotary_percent)
    q64, k64 = (_rope_fp64(t, layout.positions, rot, 500.0) for t in (q, k))
    want = dense_reference_attention(q64, k64, v.double(), layout.doc_ids, mode)  # [s, b, h, d]
    assert out.shape == (32, 2, 64)
    torch.testing.assert_close(out.double(), want.reshape(32, 2, 64), rtol=0, atol=2e-5)


def test_missing_layout_is_refused():
    model = _model()
    tokens = torch.randint(0, 128, (2, 32))
    with pytest.raises(TypeError, match="AnchorLayout"):  # GPTModel's own forward has no layout to pass
        GPTModel.forward(model, input_ids=tokens, position_ids=None, attention_mask=None)


def test_layout_reaches_every_layer_and_modes_differ_on_packed_samples():
    tokens = torch.randint(1, 128, (2, 32))
    losses = {}
    for mode in ("anchor", "intra_doc", "causal"):
        model = _model(attention_mode=mode)
        losses[mode] = model(tokens, tokens.roll(-1, 1), _layout(_doc_ids())).mean().item()
    assert len({round(v, 5) for v in losses.values()}) == 3, losses


def test_one_document_sample_gives_the_same_loss_in_all_modes():
    tokens = torch.randint(1, 128, (2, 32))
    one_doc = torch.zeros(2, 32, dtype=torch.long)  # the whole sample is document 0
    anchor_plus_one = (torch.arange(32) > 0).long().expand(2, 32)  # anchor, then a single document
    losses = {}
    for mode in ("anchor", "intra_doc", "causal"):
        model = _model(attention_mode=mode)
        for name, doc in (("one", one_doc), ("anchor+1", anchor_plus_one)):
            losses[mode, name] = model(tokens, tokens.roll(-1, 1), _layout(doc)).detach()
    for mode in ("intra_doc", "causal"):
        torch.testing.assert_close(losses[mode, "one"], losses["anchor", "one"], rtol=1e-6, atol=1e-6)
    # With the anchor as its own document, anchor mode sees everything (= causal); intra_doc does not.
    torch.testing.assert_close(
        losses["anchor", "anchor+1"], losses["causal", "anchor+1"], rtol=1e-6, atol=1e-6
    )
    assert not torch.allclose(losses["intra_doc", "anchor+1"], losses["causal", "anchor+1"], atol=1e-4)


def test_rope_uses_the_layout_positions_relatively():
    model = _model()
    tokens, doc = torch.randint(1, 128, (2, 32)), _doc_ids()
    base = model(tokens, tokens, _layout(doc)).detach()
    shifted = model(tokens, tokens, _layout(doc, shift=5000)).detach()
    reset = model(tokens, tokens, _layout(doc, positions="reset")).detach()
    torch.testing.assert_close(shifted, base, rtol=1e-5, atol=1e-5)  # fp32 RoPE: shift-invariant
    assert not torch.allclose(reset, base, atol=1e-4)


def test_llama_shape_no_bias_untied_gqa():
    names = dict(_model().named_parameters())
    assert not [n for n in names if n.endswith("bias")]
    assert names["output_layer.weight"] is not names["embedding.word_embeddings.weight"]
    assert names["decoder.layers.0.self_attention.linear_qkv.weight"].shape == (64 + 2 * 2 * 16, 64)
    assert names["decoder.layers.0.mlp.linear_fc1.weight"].shape == (2 * 128, 64)  # SwiGLU: gate and up
    qwen = dict(_model(add_qkv_bias=True).named_parameters())
    assert sorted(n for n in qwen if n.endswith("bias")) == [
        f"decoder.layers.{i}.self_attention.linear_qkv.bias" for i in range(2)
    ]
    tied = dict(_model(untie_embeddings=False).named_parameters())
    assert "output_layer.weight" not in tied


def test_selective_recompute_gives_the_same_gradients():
    tokens, layout = torch.randint(1, 128, (2, 32)), _layout(_doc_ids())
    grads = []
    for recompute in (False, True):
        model = _model(recompute_attention=recompute)
        model(tokens, tokens.roll(-1, 1), layout).mean().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-6, atol=1e-7)


def test_bf16_autocast_stays_close_to_fp32():
    model = _model()
    tokens, layout = torch.randint(1, 128, (2, 32)), _layout(_doc_ids())
    ref = model(tokens, tokens.roll(-1, 1), layout).mean()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(tokens, tokens.roll(-1, 1), layout).mean()
    assert low.dtype == torch.float32 and abs(low.item() - ref.item()) < 2e-2 * ref.item()


def test_full_recompute_wrapping_gives_the_same_gradients():
    from megatron_anchor.training.parallel import ParallelDims, parallelize

    dims = ParallelDims(tp=1, cp=1, dp=1, rank=0, tp_rank=0, cp_rank=0, dp_rank=0)
    tokens, layout = torch.randint(1, 128, (2, 32)), _layout(_doc_ids())
    grads = []
    for full in (False, True):
        raw = _model()
        wrapped = parallelize(raw, dims, recompute_full=full, distributed_optimizer=False)
        wrapped(tokens, tokens.roll(-1, 1), layout).mean().backward()
        names = [n for n, _ in raw.named_parameters()]
        assert any("_checkpoint_wrapped_module" in n for n in names) == full
        grads.append([p.grad.clone() for p in raw.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
