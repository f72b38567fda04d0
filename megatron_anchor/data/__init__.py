"""Anchor insertion, packing, the packed indexed dataset and per-sample layout tensors."""

from megatron_anchor.data.positions import POSITION_MODES, position_ids_from_doc_ids

__all__ = ["POSITION_MODES", "position_ids_from_doc_ids"]
