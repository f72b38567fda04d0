"""Context parallelism as index arithmetic: layouts (which tokens each CP rank holds), the attention mask's
counts (the work each query and rank does), the communication types' degrees, loopback ports.

It imports nothing of ``megatron_anchor.attention`` (which builds on it). Names are imported on first use
(PEP 562), so ``CP_LAYOUTS``, ``ATTENTION_MODES`` and ``CP_COMM_TYPES`` are available without torch.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "ATTENTION_MODES": "layout_names",
    "CP_COMM_TYPES": "comm_types",
    "CPDegrees": "comm_types",
    "cp_degrees": "comm_types",
    "comm_type_groups": "comm_types",
    "kv_head_repeat": "comm_types",
    "CP_LAYOUTS": "layout_names",
    "balanced_cp_index": "balanced_layout",
    "batch_cp_index": "cp_layout",
    "cp_chunk_ids": "cp_layout",
    "cp_token_index": "cp_layout",
    "megatron_cp_index": "cp_layout",
    "ring_cp_index": "cp_layout",
    "shard_for_cp": "cp_layout",
    "unshard_from_cp": "cp_layout",
    "free_port": "ports",
    "rank_work": "work",
    "visible_keys_per_query": "work",
    "visible_pairs": "work",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
