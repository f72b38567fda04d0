"""Context-parallel layouts (which tokens each CP rank holds) and loopback ports, as index arithmetic.

Names are imported on first use (PEP 562), so ``CP_LAYOUTS`` is available without torch.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "CP_LAYOUTS": "layout_names",
    "balanced_cp_index": "balanced_layout",
    "batch_cp_index": "cp_layout",
    "cp_chunk_ids": "cp_layout",
    "cp_token_index": "cp_layout",
    "megatron_cp_index": "cp_layout",
    "shard_for_cp": "cp_layout",
    "unshard_from_cp": "cp_layout",
    "free_port": "ports",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
