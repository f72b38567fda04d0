"""Tensor-by-tensor mapping between Hugging Face Llama-family names and megatron-core GPTModel names.

Everything here is pure: tensors in, tensors out, one layer at a time, so that a converter can stream a
70B checkpoint without holding it twice. Names are those of megatron-core's local layer spec; the fused
norms of Transformer Engine's spec are a renaming (see ``TE_RENAMES``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

# Local spec name suffix -> Transformer Engine spec name suffix (TE fuses the pre-norms into the linears).
TE_RENAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
}


@dataclass(frozen=True)
class ModelShape:
    """The dimensions a conversion needs, read from a Hugging Face config."""

    architecture: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_hidden_size: int
    vocab_size: int
    padded_vocab_size: int
    qkv_bias: bool
    tie_embeddings: bool


def shape_from_hf_config(config: dict, padded_vocab_size: int | None = None) -> ModelShape:
    """Read a HF ``config.json`` dict; a clear error for unsupported architectures."""
    archs = config.get("architectures") or []
    arch = next((a for a in archs if a in SUPPORTED_ARCHITECTURES), None)
    if arch is None:
        raise ValueError(
            f"unsupported architecture {archs or config.get('model_type')!r}; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    heads = config["num_attention_heads"]
    hidden = config["hidden_size"]
    vocab = config["vocab_size"]
    return ModelShape(
        architecture=arch,
        num_layers=config["num_hidden_layers"],
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=config.get("num_key_value_heads") or heads,
        head_dim=config.get("head_dim") or hidden // heads,
        ffn_hidden_size=config["intermediate_size"],
        vocab_size=vocab,
        padded_vocab_size=padded_vocab_size or vocab,
        qkv_bias=arch == "Qwen2ForCausalLM" or bool(config.get("attention_bias", False)),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """HF q/k/v (weights ``[n*d, H]`` or biases ``[n*d]``) -> megatron-core's grouped ``[q.. k v]`` layout."""
    groups, per_group = shape.num_kv_heads, shape.num_heads // shape.num_kv_heads
    tail = q.shape[1:]
    q = q.reshape(groups, per_group * shape.head_dim, *tail)
    k = k.reshape(groups, shape.head_dim, *tail)
    v = v.reshape(groups, shape.head_dim, *tail)
    return torch.cat([q, k, v], dim=1).reshape(-1, *tail)  # [ng * (np/ng + 2) * d, ...]


def split_qkv(qkv: torch.Tensor, shape: ModelShape) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of ``fuse_qkv``."""
    groups, per_group, dim = shape.num_kv_heads, shape.num_heads // shape.num_kv_heads, shape.head_dim
    tail = qkv.shape[1:]
    grouped = qkv.reshape(groups, (per_group + 2) * dim, *tail)
    q, k, v = grouped.split([per_group * dim, dim, dim], dim=1)
    return q.reshape(-1, *tail), k.reshape(-1, *tail), v.reshape(-1, *tail)


def pad_vocab(weight: torch.Tensor, shape: ModelShape) -> torch.Tensor:
    """Append zero rows up to the padded vocabulary size."""
    extra = shape.padded_vocab_size - weight.shape[0]
    return weight if extra == 0 else torch.cat([weight, weight.new_zeros(extra, weight.shape[1])])


def _layer_pairs(i: int) -> list[tuple[str, str]]:
    """(mcore, HF) names of the tensors that map one to one in layer ``i``."""
    mc, hf = f"decoder.layers.{i}.", f"model.layers.{i}."
    return [
        (mc + "input_layernorm.weight", hf + "input_layernorm.weight"),
        (mc + "self_attention.linear_proj.weight", hf + "self_attn.o_proj.weight"),
        (mc + "pre_mlp_layernorm.weight", hf + "post_attention_layernorm.weight"),
        (mc + "mlp.linear_fc2.weight", hf + "mlp.down_proj.weight"),
    ]


def hf_to_mcore(get: Callable[[str], torch.Tensor], shape: ModelShape) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield full (TP-unsplit) megatron-core tensors, fetching HF tensors by name one layer at a time."""
    yield "embedding.word_embeddings.weight", pad_vocab(get("model.embed_tokens.weight"), shape)
    for i in range(shape.num_layers):
        hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
        for mc_name, hf_name in _layer_pairs(i):
            yield mc_name, get(hf_name)
        attn = hf + "self_attn."
        yield mc + "self_attention.linear_qkv.weight", fuse_qkv(
            get(attn + "q_proj.weight"), get(attn + "k_proj.weight"), get(attn + "v_proj.weight"), shape
        )
        if shape.qkv_bias:
            yield mc + "self_attention.linear_qkv.bias", fuse_qkv(
                get(attn + "q_proj.bias"), get(attn + "k_proj.bias"), get(attn + "v_proj.bias"), shape
            )
        gate_up = [get(hf + "mlp.gate_proj.weight"), get(hf + "mlp.up_proj.weight")]
        yield mc + "mlp.linear_fc1.weight", torch.cat(gate_up)  # [2 * ffn, H]
    yield "decoder.final_layernorm.weight", get("model.norm.weight")
    if not shape.tie_embeddings:
        yield "output_layer.weight", pad_vocab(get("lm_head.weight"), shape)


def mcore_to_hf(get: Callable[[str], torch.Tensor], shape: ModelShape) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield HF tensors from full megatron-core tensors fetched by name (padding rows dropped)."""
    yield "model.embed_tokens.weight", get("embedding.word_embeddings.weight")[: shape.vocab_size]
    for i in range(shape.num_layers):
        hf, mc = f"model.layers.{i}.", f"decoder.layers.{i}."
        for mc_name, hf_name in _layer_pairs(i):
            yield hf_name, get(mc_name)
        suffixes = ["weight"] + (["bias"] if shape.qkv_bias else [])
        for suffix in suffixes:
            q, k, v = split_qkv(get(f"{mc}self_attention.linear_qkv.{suffix}"), shape)
            yield from ((f"{hf}self_attn.{p}_proj.{suffix}", t) for p, t in zip("qkv", (q, k, v)))
        gate, up = get(mc + "mlp.linear_fc1.weight").chunk(2)
        yield hf + "mlp.gate_proj.weight", gate
        yield hf + "mlp.up_proj.weight", up
    yield "model.norm.weight", get("decoder.final_layernorm.weight")
    if not shape.tie_embeddings:
        yield "lm_head.weight", get("output_layer.weight")[: shape.vocab_size]


def _tp_split_dim(name: str) -> int | None:
    """Axis along which megatron-core splits ``name`` over TP ranks (None: replicated)."""
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")):
        return 1  # row parallel
    if name.endswith(("linear_qkv.weight", "linear_qkv.bias", "linear_fc1.weight", "word_embeddings.weight")):
        return 0
    if name == "output_layer.weight":
        return 0
    return None


def split_for_tp(name: str, tensor: torch.Tensor, tp_size: int, shape: ModelShape) -> list[torch.Tensor]:
    """This tensor's shard on each TP rank, as megatron-core's parallel layers hold it."""
    dim = _tp_split_dim(name)
    if dim is None or tp_size == 1:
        return [tensor] * tp_size
    if "linear_qkv" in name:
        if shape.num_kv_heads % tp_size:
            raise ValueError(
                f"num_key_value_heads {shape.num_kv_heads} must be divisible by TP size {tp_size}"
            )
        # Whole query groups go to each rank: [ng, (np/ng + 2) * d, ...] split on ng.
        grouped = tensor.reshape(shape.num_kv_heads, -1, *tensor.shape[1:])
        return [g.reshape(-1, *tensor.shape[1:]) for g in grouped.chunk(tp_size)]
    if name.endswith("linear_fc1.weight"):
        # Gate and up are split separately, so each rank holds [gate_r; up_r].
        gate, up = tensor.chunk(2)
        return [torch.cat(pair) for pair in zip(gate.chunk(tp_size), up.chunk(tp_size))]
    return list(tensor.chunk(tp_size, dim=dim))


def merge_from_tp(name: str, shards: list[torch.Tensor], shape: ModelShape) -> torch.Tensor:
    """Inverse of ``split_for_tp``."""
    dim = _tp_split_dim(name)
    if dim is None or len(shards) == 1:
        return shards[0]
    if name.endswith("linear_fc1.weight"):
        gates, ups = zip(*(s.chunk(2) for s in shards))
        return torch.cat([*gates, *ups])
    return torch.cat(shards, dim=dim)  # qkv groups concatenate back in order
