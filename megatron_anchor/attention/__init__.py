"""Anchor-aware context-parallel attention."""

from megatron_anchor.attention.backends import BACKENDS
from megatron_anchor.attention.cp_attention import anchor_cp_attention
from megatron_anchor.attention.plan import AttentionStats
from megatron_anchor.attention.reference import ATTENTION_MODES, dense_reference_attention, visibility_mask

__all__ = [
    "anchor_cp_attention",
    "AttentionStats",
    "BACKENDS",
    "dense_reference_attention",
    "visibility_mask",
    "ATTENTION_MODES",
]
