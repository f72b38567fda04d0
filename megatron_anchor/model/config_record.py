"""The model configuration as a checkpoint records it: ``{"model": {...}, "rope": {...}}`` under the
trainer's flag names (Megatron's), so that a reader can take every omitted model flag from it.

The architecture (norm, activation, biases, dropout) is recorded since format 2 checkpoints gained it;
older checkpoints were all built one way, ``LEGACY_ARCHITECTURE``, which readers assume where it is absent.
"""

from __future__ import annotations

import math

from megatron_anchor.model.config import AnchorGPTConfig
from megatron_anchor.rope.scaling import RopeScaling

# Recorded keys that must equal the run's value for the weights to mean the same thing.
SHAPE_KEYS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "add_qkv_bias",
    "untie_embeddings_and_output_weights",
    "norm_epsilon",
    "normalization",
    "apply_layernorm_1p",
    "swiglu",
    "add_bias_linear",
    "rotary_percent",
    "rotary_interleaved",
)
# Recorded keys a run may change on purpose (context extension, another dropout).
CHANGEABLE_KEYS = ("rotary_base", "rope_scaling", "hidden_dropout")
# Recorded training choices: never taken from a checkpoint (the run's own flag or default applies), a
# difference is reported.
TRAINING_CHOICES = ("attention_mode", "position_ids")
# The architecture of every checkpoint written before it was recorded (Llama's).
LEGACY_ARCHITECTURE = {
    "normalization": "RMSNorm",
    "apply_layernorm_1p": False,
    "swiglu": True,
    "add_bias_linear": False,
    "hidden_dropout": 0.0,
}

# Switches by key: (the flag, the value it sets).
SWITCHES = {
    "apply_layernorm_1p": ("--apply-layernorm-1p", True),
    "swiglu": ("--swiglu", True),
    "add_bias_linear": ("--disable-bias-linear", False),
    "add_qkv_bias": ("--add-qkv-bias", True),
    "untie_embeddings_and_output_weights": ("--untie-embeddings-and-output-weights", True),
    "rotary_interleaved": ("--rotary-interleaved", True),
}


def flag_name(key: str) -> str:
    """The command-line flag of record key ``key`` (a switch's own name: ``--disable-bias-linear``)."""
    return SWITCHES[key][0] if key in SWITCHES else "--" + key.replace("_", "-")


def switch_on(key: str, value: object) -> bool:
    """Whether switch ``key`` is given for ``value``."""
    return value == SWITCHES[key][1]


def flag_setting(key: str, value: object) -> str:
    """``key = value`` as the command line says it: a switch by its presence (``--swiglu``, or
    ``no --swiglu``; Megatron's store_true flags alike), any other flag with its value."""
    if key in SWITCHES:
        return flag_name(key) if switch_on(key, value) else f"no {flag_name(key)}"
    if isinstance(value, bool):
        return flag_name(key) if value else f"no {flag_name(key)}"
    return f"{flag_name(key)} {value}"


def recorded_model(meta: dict) -> dict:
    """A checkpoint's ``model`` and ``rope`` sections as one dict, with ``LEGACY_ARCHITECTURE`` where the
    checkpoint predates those fields (empty for a ``meta`` without a model section)."""
    if "model" not in meta:
        return dict(meta.get("rope", {}))
    return {**LEGACY_ARCHITECTURE, **meta["model"], **meta.get("rope", {})}


def config_record(
    cfg: AnchorGPTConfig,
    *,
    vocab_size: int,
    make_vocab_size_divisible_by: int | None,
    position_ids: str | None = None,
) -> dict:
    """``{"model": ..., "rope": ...}`` for ``cfg``; ``vocab_size`` is the tokenizer's (``cfg`` holds the
    padded size); ``position_ids`` the RoPE position rule trained with (None: none, e.g. a conversion)."""
    model = {
        "num_layers": cfg.num_layers,
        "hidden_size": cfg.hidden_size,
        "ffn_hidden_size": cfg.ffn_hidden_size,
        "num_attention_heads": cfg.num_attention_heads,
        "num_query_groups": cfg.num_query_groups or cfg.num_attention_heads,
        "vocab_size": vocab_size,
        "padded_vocab_size": cfg.vocab_size,
        "make_vocab_size_divisible_by": make_vocab_size_divisible_by,
        "norm_epsilon": cfg.norm_epsilon,
        "normalization": cfg.normalization,
        "apply_layernorm_1p": cfg.apply_layernorm_1p,
        "swiglu": cfg.swiglu,
        "add_bias_linear": cfg.add_bias_linear,
        "add_qkv_bias": cfg.add_qkv_bias,
        "untie_embeddings_and_output_weights": cfg.untie_embeddings,
        "hidden_dropout": cfg.hidden_dropout,
        "init_method_std": cfg.init_method_std,
        "attention_mode": cfg.attention_mode,
    }
    if position_ids is not None:
        model["position_ids"] = position_ids
    rope = rope_record(cfg.rotary_base, cfg.rotary_percent, cfg.rotary_interleaved, cfg.rope_scaling)
    return {"model": model, "rope": rope}


def rope_record(
    rotary_base: float, rotary_percent: float, rotary_interleaved: bool, rope_scaling: RopeScaling | None
) -> dict:
    """The ``rope`` section of a record."""
    return {
        "rotary_base": float(rotary_base),
        "rotary_percent": float(rotary_percent),
        "rotary_interleaved": bool(rotary_interleaved),
        "rope_scaling": None if rope_scaling is None else rope_scaling.to_dict(),
    }


def pad_vocab_size(vocab_size: int, divisible_by: int, tp_size: int) -> int:
    """Megatron's vocabulary padding: round up to a multiple of ``divisible_by * tp_size``."""
    multiple = divisible_by * tp_size
    return int(math.ceil(vocab_size / multiple) * multiple)
