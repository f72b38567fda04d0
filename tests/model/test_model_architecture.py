"""Megatron-LM's default architecture (LayerNorm, GeLU, linear biases, tied embeddings, hidden dropout) and
--apply-layernorm-1p, built by the anchor model on CPU: against transformers' GPT-NeoX (a pre-LayerNorm GeLU
transformer with biases and rotate-half RoPE), and the zero-centred norm against the plain one."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from megatron_anchor.data import position_ids_from_doc_ids
from megatron_anchor.model import AnchorGPTConfig, AnchorLayout, build_anchor_gpt

S, B, VOCAB = 24, 2, 128
# Megatron-LM's defaults: LayerNorm, GeLU (4 x hidden), biases everywhere, tied embeddings, dropout 0.1.
MEGATRON = AnchorGPTConfig(
    num_layers=2, hidden_size=64, ffn_hidden_size=256, num_attention_heads=4, vocab_size=VOCAB, seq_length=S,
    attention_mode="causal", normalization="LayerNorm", swiglu=False, add_bias_linear=True,
    untie_embeddings=False, hidden_dropout=0.1,
)  # fmt: skip


def _model(seed: int = 0, **changes):
    torch.manual_seed(seed)
    return build_anchor_gpt(dataclasses.replace(MEGATRON, **changes))


def _batch():
    tokens = torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(1))
    labels = torch.randint(0, VOCAB, (B, S), generator=torch.Generator().manual_seed(2))
    doc = torch.ones(B, S, dtype=torch.long)
    doc[:, 0] = 0  # the anchor; causal attention over the whole sample, positions 0..S-1
    return tokens, labels, AnchorLayout(doc_ids=doc, positions=position_ids_from_doc_ids(doc, "global"))


def _neox(model, tied: bool):
    """transformers' GPT-NeoX with ``model``'s weights (sequential residual, exact GeLU, full RoPE)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256,
        max_position_embeddings=S, use_parallel_residual=False, hidden_act="gelu", layer_norm_eps=1e-5,
        tie_word_embeddings=tied, attention_bias=True,
    )  # fmt: skip
    if getattr(config, "rope_parameters", None) is not None:  # transformers 5
        config.rope_parameters = {
            **config.rope_parameters,
            "partial_rotary_factor": 1.0,
            "rope_theta": 10000.0,
        }
    else:
        config.rotary_pct, config.rotary_emb_base = 1.0, 10000
    neox = GPTNeoXForCausalLM(config).eval()
    mine = dict(model.named_parameters())
    names = {"gpt_neox.embed_in.weight": "embedding.word_embeddings.weight",
             "gpt_neox.final_layer_norm.weight": "decoder.final_layernorm.weight",
             "gpt_neox.final_layer_norm.bias": "decoder.final_layernorm.bias"}  # fmt: skip
    parts = {"input_layernorm": "input_layernorm", "post_attention_layernorm": "pre_mlp_layernorm",
             # megatron-core's qkv of one head per group is [q, k, v] per head: GPT-NeoX's layout
             "attention.query_key_value": "self_attention.linear_qkv",
             "attention.dense": "self_attention.linear_proj",
             "mlp.dense_h_to_4h": "mlp.linear_fc1", "mlp.dense_4h_to_h": "mlp.linear_fc2"}  # fmt: skip
    for i in range(2):
        for theirs, ours in parts.items():
            for kind in ("weight", "bias"):
                names[f"gpt_neox.layers.{i}.{theirs}.{kind}"] = f"decoder.layers.{i}.{ours}.{kind}"
    state = {k for k in neox.state_dict() if "rotary" not in k and "masked_bias" not in k}
    (head,) = {k for k in state if not k.startswith("gpt_neox.")}  # embed_out (4.x) or lm_head (5.x)
    if not tied:
        names[head] = "output_layer.weight"
    assert state == {*names, head}, state ^ {*names, head}
    with torch.no_grad():
        for theirs, ours in names.items():
            neox.get_parameter(theirs).copy_(mine[ours])
    return neox


@pytest.mark.parametrize("tied", [True, False])
def test_megatron_defaults_are_gpt_neox_with_layernorm_gelu_and_biases(tied):
    model = _model(untie_embeddings=not tied).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that each one moves the loss
        for name, p in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                p.add_(0.2 * torch.randn_like(p))
    tokens, labels, layout = _batch()
    with torch.no_grad():
        ours = model(tokens, labels, layout)  # [b, s] token losses
        logits = _neox(model, tied)(tokens).logits.double()
    theirs = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1), reduction="none").view(B, S)
    assert torch.allclose(ours.double(), theirs, atol=2e-5, rtol=1e-5), (ours - theirs).abs().max()
    assert {n.rsplit(".", 2)[-2] for n, _ in model.named_parameters() if n.endswith("bias")} >= {
        "input_layernorm",
        "linear_qkv",
        "linear_proj",
        "linear_fc1",
        "linear_fc2",
        "final_layernorm",
    }


def test_hidden_dropout_is_active_in_training_only_and_backward_runs_on_cpu():
    tokens, labels, layout = _batch()
    model = _model()
    train = [model(tokens, labels, layout) for _ in range(2)]
    assert not torch.equal(train[0], train[1])  # a new mask each forward
    train[0].sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    with torch.no_grad():
        evaluated = model.eval()(tokens, labels, layout)
        undropped = _model(hidden_dropout=0.0).eval()(tokens, labels, layout)
    assert torch.equal(evaluated, undropped)  # same weights: dropout is the only difference


@pytest.mark.parametrize("normalization", ["LayerNorm", "RMSNorm"])
def test_apply_layernorm_1p_scales_by_one_plus_a_zero_initialised_weight(normalization):
    tokens, labels, layout = _batch()
    plain = _model(normalization=normalization, hidden_dropout=0.0).eval()
    centred = _model(normalization=normalization, hidden_dropout=0.0, apply_layernorm_1p=True).eval()
    norms = [n for n, _ in centred.named_parameters() if "layernorm" in n and n.endswith("weight")]
    assert len(norms) == 5 and all(torch.equal(centred.get_parameter(n), torch.zeros(64)) for n in norms)
    with torch.no_grad():
        assert torch.equal(plain(tokens, labels, layout), centred(tokens, labels, layout))  # 1 + 0 == 1
        for name in norms:
            delta = 0.3 * torch.randn(64)
            centred.get_parameter(name).copy_(delta)
            plain.get_parameter(name).copy_(1.0 + delta)
        assert torch.allclose(plain(tokens, labels, layout), centred(tokens, labels, layout), atol=1e-6)
