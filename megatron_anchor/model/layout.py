"""The packed-sample layout that every anchor attention layer needs, carried by ``packed_seq_params``.

megatron-core hands ``GPTModel.forward(packed_seq_params=...)`` unchanged through the transformer block,
each layer and ``SelfAttention`` down to ``core_attention(..., packed_seq_params=...)``. With
``qkv_format="sbhd"`` none of its ``thd``-only branches (squeezing the batch axis, cu_seqlens RoPE) run,
so this subclass is the explicit path by which document ids and RoPE positions reach the attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from megatron.core.packed_seq_params import PackedSeqParams


@dataclass
class AnchorLayout(PackedSeqParams):
    """Per-batch sample layout: the full sample's ``doc_ids [b, S]``, this rank's ``positions [b, s_local]``.

    ``positions`` are the RoPE positions of the tokens this CP rank holds, in its local (load-balanced)
    order; ``doc_ids`` covers the whole sample on every rank (the attention needs every boundary).
    """

    doc_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    _rope_angles: dict = field(default_factory=dict, repr=False, compare=False)

    def rope_angles(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """fp32 angles ``[b, s_local, d_rot/2]`` of ``positions``, built once and shared by every layer."""
        from megatron_anchor.rope import rotary_angles

        key = (inv_freq.data_ptr(), inv_freq.numel())
        if key not in self._rope_angles:
            self._rope_angles[key] = rotary_angles(self.positions, inv_freq.to(self.positions.device))
        return self._rope_angles[key]

    def __post_init__(self) -> None:
        self.qkv_format = "sbhd"
        if self.doc_ids is None or self.positions is None:
            raise ValueError("AnchorLayout needs doc_ids [b, S] and positions [b, s_local]")
        if self.doc_ids.dim() != 2 or self.positions.dim() != 2:
            raise ValueError(
                f"doc_ids must be [b, S] and positions [b, s_local]; got {tuple(self.doc_ids.shape)} "
                f"and {tuple(self.positions.shape)}"
            )
