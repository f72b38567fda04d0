"""Anchor-aware context-parallel attention.

``reference`` (dense fp64 attention, the visibility mask), ``geometry`` (which K/V rows each rank needs,
for any layout), ``plan`` (the per-micro-batch plan: index tensors and kernel calls), ``backends`` /
``flash`` / ``flash_packages`` (variable-length kernels), ``comm`` (the ring and the anchor exchange),
``anchor`` (the anchor in closed form), ``ring`` (forward and backward), ``heads_exchange`` (the
all-to-all of ``--cp-comm-type a2a`` and ``a2a+p2p``), ``cp_attention`` (the public entry). The package
sits above ``megatron_anchor.parallel`` (layouts, the mode names, the mask's counts, the comm types'
degrees), which never imports it. Names are imported on first use (PEP 562).
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "anchor_cp_attention": "cp_attention",
    "AttentionStats": "plan",
    "AttentionPlan": "plan",
    "build_attention_plan": "plan",
    "BACKENDS": "backends",
    "dense_reference_attention": "reference",
    "visibility_mask": "reference",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
