"""Anchor-aware context-parallel attention.

``reference`` (the visibility rule, dense fp64 attention, per-query work), ``geometry`` (which K/V rows each
rank needs, for any layout), ``plan`` (the per-micro-batch plan: index tensors and kernel calls),
``backends`` / ``flash`` (variable-length kernels), ``comm`` (the ring and the anchor exchange), ``ring``
(forward and backward), ``cp_attention`` (the public entry). Names are imported on first use (PEP 562), so
the layout code in ``megatron_anchor.parallel`` can use ``reference`` without importing the rest.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "anchor_cp_attention": "cp_attention",
    "AttentionStats": "plan",
    "AttentionPlan": "plan",
    "build_attention_plan": "plan",
    "BACKENDS": "backends",
    "ATTENTION_MODES": "reference",
    "dense_reference_attention": "reference",
    "visibility_mask": "reference",
    "visible_keys_per_query": "reference",
    "visible_pairs": "reference",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
