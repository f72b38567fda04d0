"""Tensor-by-tensor mapping between Hugging Face Llama-family names and megatron-core GPTModel names.

Everything here is pure: tensors in, tensors out, one rule (one megatron-core tensor) at a time, so that a
converter can stream a 70B checkpoint without holding it twice. Names are those of megatron-core's local
layer spec; the fused norms of Transformer Engine's spec are a renaming (``checkpoint.names``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM")

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


@dataclass(frozen=True)
class TensorRule:
    """One megatron-core tensor, the HF tensors it is made of, and the conversion both ways."""

    mcore: str
    hf: tuple[str, ...]
    to_mcore: Callable[[list[torch.Tensor]], torch.Tensor]
    to_hf: Callable[[torch.Tensor], list[torch.Tensor]]


def _same(mcore: str, hf: str) -> TensorRule:
    return TensorRule(mcore, (hf,), lambda ts: ts[0], lambda t: [t])


def _vocab_rule(mcore: str, hf: str, shape: ModelShape) -> TensorRule:
    return TensorRule(mcore, (hf,), lambda ts: pad_vocab(ts[0], shape), lambda t: [t[: shape.vocab_size]])


def _layer_rules(i: int, shape: ModelShape) -> list[TensorRule]:
    mc, hf = f"decoder.layers.{i}.", f"model.layers.{i}."
    attn = hf + "self_attn."
    rules = [
        _same(mc + "input_layernorm.weight", hf + "input_layernorm.weight"),
        _same(mc + "self_attention.linear_proj.weight", attn + "o_proj.weight"),
        _same(mc + "pre_mlp_layernorm.weight", hf + "post_attention_layernorm.weight"),
        _same(mc + "mlp.linear_fc2.weight", hf + "mlp.down_proj.weight"),
    ]
    for suffix in ("weight", "bias") if shape.qkv_bias else ("weight",):
        rules.append(TensorRule(
            mc + f"self_attention.linear_qkv.{suffix}",
            tuple(f"{attn}{p}_proj.{suffix}" for p in "qkv"),
            lambda ts: fuse_qkv(*ts, shape),
            lambda t: list(split_qkv(t, shape)),
        ))
    rules.append(TensorRule(
        mc + "mlp.linear_fc1.weight",
        (hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"),
        torch.cat,  # [gate; up]: [2 * ffn, H]
        lambda t: list(t.chunk(2)),
    ))
    return rules


def tensor_rules(shape: ModelShape) -> list[TensorRule]:
    """Every megatron-core tensor of the model in file order (embeddings, layer by layer, head)."""
    rules = [_vocab_rule("embedding.word_embeddings.weight", "model.embed_tokens.weight", shape)]
    for i in range(shape.num_layers):
        rules += _layer_rules(i, shape)
    rules.append(_same("decoder.final_layernorm.weight", "model.norm.weight"))
    if not shape.tie_embeddings:
        rules.append(_vocab_rule("output_layer.weight", "lm_head.weight", shape))
    return rules


def hf_to_mcore(get: Callable[[str], torch.Tensor], shape: ModelShape) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield full (TP-unsplit) megatron-core tensors, fetching HF tensors by name one rule at a time."""
    for rule in tensor_rules(shape):
        yield rule.mcore, rule.to_mcore([get(name) for name in rule.hf])


def mcore_to_hf(get: Callable[[str], torch.Tensor], shape: ModelShape) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield HF tensors from full megatron-core tensors fetched by name (padding rows dropped)."""
    for rule in tensor_rules(shape):
        yield from zip(rule.hf, rule.to_hf(get(rule.mcore)))


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
    if "linear_qkv" in name and shape.num_kv_heads % tp_size:
        raise ValueError(f"num_key_value_heads {shape.num_kv_heads} must be divisible by TP size {tp_size}")
    if tensor.shape[dim] % tp_size:
        raise ValueError(f"{name}: size {tensor.shape[dim]} of dim {dim} not divisible by TP size {tp_size}")
    if "linear_qkv" in name:
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
