"""The packed-sample layout that every anchor attention layer needs, carried by ``packed_seq_params``.

megatron-core hands ``GPTModel.forward(packed_seq_params=...)`` unchanged through the transformer block,
each layer and ``SelfAttention`` down to ``core_attention(..., packed_seq_params=...)``. With
``qkv_format="sbhd"`` none of its ``thd``-only branches (squeezing the batch axis, cu_seqlens RoPE) run,
so this subclass is the explicit path by which document ids, the CP layout and RoPE positions reach the
attention. It is made once per micro-batch, so it also caches what every layer shares: the attention plan
(built on first use, reused by every layer and by recompute) and the RoPE angle table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core.packed_seq_params import PackedSeqParams

from megatron_anchor.attention import AttentionPlan
from megatron_anchor.attention.comm import CPComm
from megatron_anchor.attention.cp_attention import rank_plan
from megatron_anchor.devices import same_device
from megatron_anchor.rope import rotary_angles


@dataclass
class AnchorLayout(PackedSeqParams):
    """Per-micro-batch sample layout.

    ``doc_ids [b, S]``: the whole sample's document ids on every rank (keep them on the host: the plan is
    built there); ``positions [b, s_local]``: the RoPE positions of this rank's tokens in local order;
    ``cp_index [b, cp, S / cp]``: which global tokens each CP rank holds (None: megatron-core's layout).
    """

    doc_ids: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    cp_index: torch.Tensor | None = None
    _rope_angles: dict = field(default_factory=dict, repr=False, compare=False)
    _plans: dict = field(default_factory=dict, repr=False, compare=False)

    def rope_angles(self, inv_freq: torch.Tensor) -> torch.Tensor:
        """fp32 angles ``[b, s_local, d_rot/2]`` of ``positions``, built once and shared by every layer.

        ``inv_freq`` must be where the positions are (``AnchorAttentionSetup.inv_freq_on``): copying it here
        would make the host wait for the device once per micro-batch.
        """
        if not same_device(inv_freq.device, self.positions.device):
            raise ValueError(
                f"inv_freq is on {inv_freq.device}, the positions on {self.positions.device}: "
                "pass AnchorAttentionSetup.inv_freq_on(device)"
            )
        if id(inv_freq) not in self._rope_angles:  # the entry keeps inv_freq alive: its id is not reused
            self._rope_angles[id(inv_freq)] = (inv_freq, rotary_angles(self.positions, inv_freq))
        return self._rope_angles[id(inv_freq)][1]

    def attention_plan(
        self,
        mode: str,
        cp_group: dist.ProcessGroup | None,
        device: torch.device,
        a2a_group: dist.ProcessGroup | None = None,
    ) -> AttentionPlan:
        """This rank's attention plan for the micro-batch: built on the first layer's call, then reused.

        ``cp_group`` is the ring's group, ``a2a_group`` the all-to-all's before it (``--cp-comm-type``).
        """
        key = (mode, id(cp_group), id(a2a_group), str(device))
        if key not in self._plans:
            ring, a2a = CPComm(cp_group, device), CPComm(a2a_group, device)
            self._plans[key] = rank_plan(self.doc_ids, mode, ring, a2a, self.cp_index, device)
        return self._plans[key]

    def __post_init__(self) -> None:
        self.qkv_format = "sbhd"
        if self.doc_ids is None or self.positions is None:
            raise ValueError("AnchorLayout needs doc_ids [b, S] and positions [b, s_local]")
        if self.doc_ids.dim() != 2 or self.positions.dim() != 2:
            raise ValueError(
                f"doc_ids must be [b, S] and positions [b, s_local]; got {tuple(self.doc_ids.shape)} "
                f"and {tuple(self.positions.shape)}"
            )
        index = self.cp_index
        if index is not None and (index.dim() != 3 or index.shape[0] != self.doc_ids.shape[0]):
            raise ValueError(f"cp_index must be [b, cp, S / cp]; got {tuple(self.cp_index.shape)}")
