"""The model configuration as a checkpoint records it: ``{"model": {...}, "rope": {...}}`` under the
trainer's flag names (Megatron's), so that a reader can take every omitted model flag from it."""

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
    "rotary_percent",
    "rotary_interleaved",
)
# Recorded keys a run may change on purpose (context extension, another attention mask).
CHANGEABLE_KEYS = ("rotary_base", "rope_scaling", "attention_mode")


def config_record(cfg: AnchorGPTConfig, *, vocab_size: int, make_vocab_size_divisible_by: int | None) -> dict:
    """``{"model": ..., "rope": ...}`` for ``cfg``; ``vocab_size`` is the tokenizer's (``cfg`` holds the
    padded size)."""
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
        "add_qkv_bias": cfg.add_qkv_bias,
        "untie_embeddings_and_output_weights": cfg.untie_embeddings,
        "init_method_std": cfg.init_method_std,
        "attention_mode": cfg.attention_mode,
    }
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
