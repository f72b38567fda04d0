"""Parallel layout helpers shared by the data pipeline and the attention."""

from megatron_anchor.parallel.balanced_layout import balanced_cp_index
from megatron_anchor.parallel.cp_layout import (
    cp_chunk_ids,
    cp_token_index,
    gather_from_cp_layout,
    megatron_cp_index,
    slice_for_cp_rank,
)
from megatron_anchor.parallel.ports import free_port

__all__ = [
    "balanced_cp_index",
    "cp_chunk_ids",
    "cp_token_index",
    "megatron_cp_index",
    "slice_for_cp_rank",
    "gather_from_cp_layout",
    "free_port",
]
