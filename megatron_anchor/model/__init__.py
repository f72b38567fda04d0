"""The anchor GPT model on megatron-core: layer spec, core attention, sample layout, recorded configuration.

Names are imported on first use (PEP 562), so the flag parser reads ``config_record``'s key lists and the
converter builds an ``AnchorGPTConfig`` without importing megatron-core (import ``config_record()`` itself
from that submodule).
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "CHANGEABLE_KEYS": "config_record",
    "SHAPE_KEYS": "config_record",
    "AnchorAttentionSetup": "core_attention",
    "AnchorCoreAttention": "core_attention",
    "AnchorGPTConfig": "config",
    "AnchorGPTModel": "gpt",
    "build_anchor_gpt": "gpt",
    "pad_vocab_size": "config_record",
    "rope_frequencies": "gpt",
    "transformer_config": "gpt",
    "AnchorLayout": "layout",
    "anchor_layer_spec": "spec",
    "transformer_engine_available": "spec",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
