"""The anchor GPT model on megatron-core: layer spec, core attention, sample layout."""

from megatron_anchor.model.config_record import CHANGEABLE_KEYS, SHAPE_KEYS, config_record, rope_record
from megatron_anchor.model.core_attention import AnchorAttentionSetup, AnchorCoreAttention
from megatron_anchor.model.gpt import (
    AnchorGPTConfig,
    AnchorGPTModel,
    build_anchor_gpt,
    pad_vocab_size,
    rope_frequencies,
    transformer_config,
)
from megatron_anchor.model.layout import AnchorLayout
from megatron_anchor.model.spec import anchor_layer_spec, transformer_engine_available

__all__ = [
    "AnchorAttentionSetup",
    "AnchorCoreAttention",
    "AnchorGPTConfig",
    "AnchorGPTModel",
    "AnchorLayout",
    "CHANGEABLE_KEYS",
    "SHAPE_KEYS",
    "anchor_layer_spec",
    "build_anchor_gpt",
    "config_record",
    "pad_vocab_size",
    "rope_frequencies",
    "rope_record",
    "transformer_config",
    "transformer_engine_available",
]
