"""HF <-> megatron-core name/layout mapping: exact round trips and layouts checked against head slicing."""

from __future__ import annotations

import pytest
import torch

from megatron_anchor.convert.hf_mapping import (
    ModelShape,
    fuse_qkv,
    hf_to_mcore,
    mcore_to_hf,
    merge_from_tp,
    shape_from_hf_config,
    split_for_tp,
)


def tiny_config(arch: str, tie: bool = False) -> dict:
    return {
        "architectures": [arch],
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 48,
        "vocab_size": 50,
        "tie_word_embeddings": tie,
    }


def random_hf_state(shape: ModelShape) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    hid, d = shape.hidden_size, shape.head_dim
    state = {"model.embed_tokens.weight": r(shape.vocab_size, hid), "model.norm.weight": r(hid)}
    if not shape.tie_embeddings:
        state["lm_head.weight"] = r(shape.vocab_size, hid)
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        state.update({
            p + "input_layernorm.weight": r(hid),
            p + "post_attention_layernorm.weight": r(hid),
            p + "self_attn.q_proj.weight": r(shape.num_heads * d, hid),
            p + "self_attn.k_proj.weight": r(shape.num_kv_heads * d, hid),
            p + "self_attn.v_proj.weight": r(shape.num_kv_heads * d, hid),
            p + "self_attn.o_proj.weight": r(hid, shape.num_heads * d),
            p + "mlp.gate_proj.weight": r(shape.ffn_hidden_size, hid),
            p + "mlp.up_proj.weight": r(shape.ffn_hidden_size, hid),
            p + "mlp.down_proj.weight": r(hid, shape.ffn_hidden_size),
        })
        if shape.qkv_bias:
            for n, heads in (("q", shape.num_heads), ("k", shape.num_kv_heads), ("v", shape.num_kv_heads)):
                state[p + f"self_attn.{n}_proj.bias"] = r(heads * d)
    return state


@pytest.mark.parametrize(
    "arch,tie", [("LlamaForCausalLM", False), ("Qwen2ForCausalLM", True), ("MistralForCausalLM", False)]
)
def test_round_trip_is_exact_with_vocab_padding(arch: str, tie: bool) -> None:
    shape = shape_from_hf_config(tiny_config(arch, tie), padded_vocab_size=64)
    hf = random_hf_state(shape)
    mc = dict(hf_to_mcore(hf.__getitem__, shape))
    assert mc["embedding.word_embeddings.weight"].shape == (64, 32)
    assert ("output_layer.weight" in mc) != tie
    back = dict(mcore_to_hf(mc.__getitem__, shape))
    assert back.keys() == hf.keys()
    for name, tensor in hf.items():
        assert torch.equal(back[name], tensor), name


def test_fused_qkv_matches_grouped_head_order() -> None:
    shape = shape_from_hf_config(tiny_config("LlamaForCausalLM"))
    hf = random_hf_state(shape)
    p = "model.layers.0.self_attn."
    qkv = fuse_qkv(hf[p + "q_proj.weight"], hf[p + "k_proj.weight"], hf[p + "v_proj.weight"], shape)
    d = shape.head_dim
    # Group 1 (second KV head) holds query heads 2, 3 then k head 1 then v head 1.
    group = qkv[4 * d : 8 * d]
    assert torch.equal(group[: 2 * d], hf[p + "q_proj.weight"][2 * d : 4 * d])
    assert torch.equal(group[2 * d : 3 * d], hf[p + "k_proj.weight"][d : 2 * d])
    assert torch.equal(group[3 * d :], hf[p + "v_proj.weight"][d : 2 * d])


def test_tp_split_merge_round_trip_and_fc1_layout() -> None:
    shape = shape_from_hf_config(tiny_config("Qwen2ForCausalLM"))
    mc = dict(hf_to_mcore(random_hf_state(shape).__getitem__, shape))
    for name, tensor in mc.items():
        shards = split_for_tp(name, tensor, 2, shape)
        assert len(shards) == 2
        assert torch.equal(merge_from_tp(name, shards, shape), tensor), name
    fc1 = mc["decoder.layers.0.mlp.linear_fc1.weight"]
    rank1 = split_for_tp("decoder.layers.0.mlp.linear_fc1.weight", fc1, 2, shape)[1]
    ffn = shape.ffn_hidden_size
    assert torch.equal(rank1[: ffn // 2], fc1[ffn // 2 : ffn])  # gate, second half
    assert torch.equal(rank1[ffn // 2 :], fc1[ffn + ffn // 2 :])  # up, second half


def test_unknown_architecture_and_indivisible_groups_are_errors() -> None:
    with pytest.raises(ValueError, match="unsupported architecture"):
        shape_from_hf_config({**tiny_config("LlamaForCausalLM"), "architectures": ["GPT2LMHeadModel"]})
    shape = shape_from_hf_config(tiny_config("LlamaForCausalLM"))
    with pytest.raises(ValueError, match="divisible by TP size"):
        split_for_tp("decoder.layers.0.self_attention.linear_qkv.weight", torch.zeros(128, 32), 4, shape)
