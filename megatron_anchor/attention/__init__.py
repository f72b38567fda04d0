"""Anchor-aware context-parallel attention.

``modes`` and ``reference`` (the visibility rules, dense fp64 attention, per-query work), ``geometry``
(which K/V rows each rank needs, for any layout), ``plan`` (the per-micro-batch plan: index tensors and
kernel calls), ``backends`` / ``flash`` / ``flash_packages`` (variable-length kernels), ``comm`` (the ring
and the anchor exchange), ``anchor`` (the anchor in closed form), ``ring`` (forward and backward),
``cp_attention`` (the public entry). Names are imported on first use (PEP 562), so ``ATTENTION_MODES`` is
available without torch and the layout code in ``megatron_anchor.parallel`` can use ``reference`` without
importing the rest.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "anchor_cp_attention": "cp_attention",
    "AttentionStats": "plan",
    "AttentionPlan": "plan",
    "build_attention_plan": "plan",
    "BACKENDS": "backends",
    "ATTENTION_MODES": "modes",
    "dense_reference_attention": "reference",
    "visibility_mask": "reference",
    "visible_keys_per_query": "reference",
    "visible_pairs": "reference",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
