"""Anchor-aware context-parallel attention.

Names are imported on first use (PEP 562), so that ``ATTENTION_MODES`` is available without torch.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "anchor_cp_attention": "cp_attention",
    "AttentionStats": "plan",
    "BACKENDS": "backends",
    "dense_reference_attention": "reference",
    "visibility_mask": "reference",
    "ATTENTION_MODES": "modes",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
