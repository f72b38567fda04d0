"""Hugging Face ``config.json`` <-> the checkpoint's ``meta.json`` model section and the trainer's flags.

A converted checkpoint records the model shape and RoPE under ``meta["model"]`` and ``meta["rope"]`` (with
the trainer's flag names), and the source config under ``meta["hf_config"]`` so that an export can write a
config transformers loads. Both HF config forms are read: transformers 4.x (``rope_theta`` and
``rope_scaling``) and 5.x (``rope_parameters`` holding ``rope_theta`` and the strategy).
"""

from __future__ import annotations

import json
import shlex
import warnings

from megatron_anchor.convert.hf_mapping import ModelShape, shape_from_hf_config
from megatron_anchor.model.config import AnchorGPTConfig
from megatron_anchor.model.config_record import config_record, rope_record
from megatron_anchor.rope import RopeScaling

MODEL_TYPES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}


def check_supported(config: dict, source: str) -> None:
    """Raise ValueError (naming ``source``) for HF features megatron_anchor's model does not have."""
    shape = shape_from_hf_config(config)
    problems = []
    if config.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {config['hidden_act']!r} (only silu / SwiGLU)")
    if config.get("mlp_bias"):
        problems.append("mlp_bias true (MLP biases)")
    if shape.architecture != "Qwen2ForCausalLM" and config.get("attention_bias"):
        problems.append("attention_bias true (Llama's o_proj bias; only a qkv bias is supported)")
    if shape.head_dim * shape.num_heads != shape.hidden_size:
        problems.append(f"head_dim {shape.head_dim} != hidden_size / num_attention_heads")
    if shape.num_heads % shape.num_kv_heads:
        problems.append("num_attention_heads not divisible by num_key_value_heads")
    if problems:
        raise ValueError(f"{source}: unsupported model settings: " + "; ".join(problems))
    window = config.get("sliding_window")
    uses_window = config.get("use_sliding_window", shape.architecture == "MistralForCausalLM")
    if window and uses_window:
        warnings.warn(
            f"{source}: sliding_window {window} is dropped: megatron_anchor attends over the whole sample",
            stacklevel=2,
        )


def rope_from_hf(config: dict) -> tuple[float, RopeScaling | None, float]:
    """(rope_theta, scaling strategy or None, rotary fraction) from either HF config form."""
    params = config.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        base, scaling_dict = params["rope_theta"], params
    else:
        base, scaling_dict = config.get("rope_theta", 10000.0), config.get("rope_scaling")
    percent = config.get("partial_rotary_factor", 1.0)
    scaling = RopeScaling.from_hf(scaling_dict, config.get("max_position_embeddings"))
    return float(base), scaling, float(percent)


def model_meta(shape: ModelShape, config: dict, make_vocab_size_divisible_by: int | None) -> dict:
    """The ``meta["model"]`` section (``config_record``'s keys, with attention mode ``causal``: how the
    source model was trained) plus the source's architecture and context length."""
    cfg = AnchorGPTConfig(
        num_layers=shape.num_layers,
        hidden_size=shape.hidden_size,
        ffn_hidden_size=shape.ffn_hidden_size,
        num_attention_heads=shape.num_heads,
        vocab_size=shape.padded_vocab_size,
        seq_length=config.get("max_position_embeddings") or 0,
        num_query_groups=shape.num_kv_heads,
        attention_mode="causal",
        add_qkv_bias=shape.qkv_bias,
        untie_embeddings=not shape.tie_embeddings,
        init_method_std=float(config.get("initializer_range", 0.02)),
        norm_epsilon=float(config.get("rms_norm_eps", 1e-5)),
    )
    record = config_record(
        cfg, vocab_size=shape.vocab_size, make_vocab_size_divisible_by=make_vocab_size_divisible_by
    )
    return {
        "architecture": shape.architecture,
        **record["model"],
        "max_position_embeddings": config.get("max_position_embeddings"),
    }


def rope_meta(base: float, scaling: RopeScaling | None, percent: float) -> dict:
    """The ``meta["rope"]`` section (Hugging Face models rotate halves, not interleaved pairs)."""
    return rope_record(base, percent, False, scaling)


def shape_from_meta(model: dict) -> ModelShape:
    """A ModelShape from a ``meta["model"]`` section."""
    heads = model["num_attention_heads"]
    # A model trained from scratch has no source architecture: Qwen2's is the one with a qkv bias.
    inferred = "Qwen2ForCausalLM" if model["add_qkv_bias"] else "LlamaForCausalLM"
    architecture = model.get("architecture") or inferred
    return ModelShape(
        architecture=architecture,
        num_layers=model["num_layers"],
        hidden_size=model["hidden_size"],
        num_heads=heads,
        num_kv_heads=model["num_query_groups"] or heads,
        head_dim=model["hidden_size"] // heads,
        ffn_hidden_size=model["ffn_hidden_size"],
        vocab_size=model["vocab_size"],
        padded_vocab_size=model["padded_vocab_size"],
        qkv_bias=model["add_qkv_bias"],
        tie_embeddings=not model["untie_embeddings_and_output_weights"],
    )


def trainer_flags(model: dict, rope: dict, tp: int) -> list[str]:
    """The ``megatron_anchor.pretrain`` flags that build exactly this model (shape, vocab, RoPE, TP)."""
    flags = [
        "--num-layers", model["num_layers"], "--hidden-size", model["hidden_size"],
        "--ffn-hidden-size", model["ffn_hidden_size"], "--num-attention-heads", model["num_attention_heads"],
        "--num-query-groups", model["num_query_groups"], "--vocab-size", model["vocab_size"],
        "--make-vocab-size-divisible-by", model["make_vocab_size_divisible_by"],
        "--norm-epsilon", model["norm_epsilon"], "--rotary-base", rope["rotary_base"],
        "--tensor-model-parallel-size", tp,
    ]
    if rope["rotary_percent"] != 1.0:
        flags += ["--rotary-percent", rope["rotary_percent"]]
    if rope["rope_scaling"] is not None:
        flags += ["--rope-scaling", json.dumps(rope["rope_scaling"], separators=(",", ":"))]
    if model["add_qkv_bias"]:
        flags.append("--add-qkv-bias")
    if not model["untie_embeddings_and_output_weights"]:
        flags.append("--share-embeddings-and-output-weights")
    return [_flag_text(f) for f in flags]


def _flag_text(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) and abs(value) < 1e16 else repr(value)
    return str(value)


def format_flags(flags: list[str]) -> str:
    """Flags as one shell-quoted, line-continued block."""
    lines, line = [], []
    for item in flags:
        if item.startswith("--") and line:
            lines.append(" ".join(line))
            line = []
        line.append(shlex.quote(item))
    lines.append(" ".join(line))
    return " \\\n    ".join(lines)


def export_hf_config(meta_model: dict, rope: dict, base_config: dict | None, max_positions: int | None,
                     dtype: str) -> dict:
    """A HF ``config.json`` dict for the exported model, keeping the source config's other fields."""
    shape = shape_from_meta(meta_model)
    config = dict(base_config or {})
    config.update({
        "architectures": [shape.architecture],
        "model_type": MODEL_TYPES[shape.architecture],
        "hidden_act": "silu",
        "num_hidden_layers": shape.num_layers,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.ffn_hidden_size,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "head_dim": shape.head_dim,
        "vocab_size": shape.vocab_size,
        "rms_norm_eps": meta_model["norm_epsilon"],
        "tie_word_embeddings": shape.tie_embeddings,
        "max_position_embeddings": max_positions or meta_model.get("max_position_embeddings") or 4096,
    })
    if shape.architecture == "LlamaForCausalLM":
        config["attention_bias"] = shape.qkv_bias
    if "dtype" in config or "torch_dtype" not in config:
        config["dtype"] = dtype
    if "torch_dtype" in config:
        config["torch_dtype"] = dtype
    _set_rope(config, rope)
    return config


def _set_rope(config: dict, rope: dict) -> None:
    """Write the RoPE in the form the source config used (5.x ``rope_parameters``, else 4.x keys)."""
    scaling = rope["rope_scaling"]
    hf_scaling = None if scaling is None else RopeScaling.from_dict(scaling).to_hf()
    if rope["rotary_percent"] != 1.0:
        config["partial_rotary_factor"] = rope["rotary_percent"]
    if "rope_parameters" in config:
        config.pop("rope_scaling", None)
        config.pop("rope_theta", None)
        config["rope_parameters"] = {"rope_type": "default", **(hf_scaling or {}),
                                     "rope_theta": rope["rotary_base"]}
    else:
        config["rope_theta"] = rope["rotary_base"]
        config["rope_scaling"] = hf_scaling
