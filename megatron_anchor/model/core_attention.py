"""The core-attention module of every layer: fp32 RoPE at per-token positions, then the anchor attention.

It plugs into megatron-core at ``SelfAttentionSubmodules.core_attention`` (see ``spec.py``), whose documented
interface is a constructor ``(config, layer_number, attn_mask_type, attention_type, **kwargs)`` and a forward
``(query, key, value, attention_mask, **kwargs)`` on ``[s, b, h, d]`` tensors returning ``[s, b, h*d]``.
The model is built with ``position_embedding_type="none"`` so RoPE happens here, once, in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps
from megatron.core.transformer.module import MegatronModule
from torch.utils.checkpoint import checkpoint

from megatron_anchor.attention import anchor_cp_attention
from megatron_anchor.devices import resolve_device
from megatron_anchor.model.layout import AnchorLayout
from megatron_anchor.parallel.comm_types import comm_type_groups
from megatron_anchor.parallel.layout_names import check_mode
from megatron_anchor.rope import apply_rotary_angles


@dataclass(frozen=True)
class AnchorAttentionSetup:
    """What the core attention needs besides megatron-core's config (fixed for a run)."""

    mode: str
    """Visibility rule: ``anchor``, ``intra_doc`` or ``causal`` (SPEC section 1)."""
    inv_freq: torch.Tensor
    """fp64 ``[rotary_dim / 2]`` RoPE frequencies (after any context-extension scaling)."""
    mscale: float = 1.0
    """Attention-logit scale applied through cos/sin (YaRN); 1.0 otherwise."""
    interleaved: bool = False
    """Rotate adjacent pairs (GPT-J style) instead of halves."""
    recompute: bool = False
    """Recompute this module in backward instead of keeping its activations (selective recompute)."""
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # inv_freq copies

    def __post_init__(self) -> None:
        check_mode(self.mode)

    def inv_freq_on(self, device: torch.device) -> torch.Tensor:
        """``inv_freq`` on ``device``, copied there once per run (the layers share it; no per-step copy)."""
        key = resolve_device(device)
        if key not in self._on_device:
            self._on_device[key] = self.inv_freq.to(key)
        return self._on_device[key]


def attention_groups(cp_comm_type: str, pg_collection=None) -> tuple:
    """``(ring group, all-to-all group)`` of ``--cp-comm-type`` (``comm_type_groups``) from megatron-core's
    process groups. Groups of one rank are None (nothing to exchange). A model built without
    ``pg_collection`` uses parallel_state's.
    """
    cp_group = getattr(pg_collection, "cp", None)
    hierarchical = getattr(pg_collection, "hcp", None)
    if cp_group is None and ps.model_parallel_is_initialized():
        cp_group = ps.get_context_parallel_group()
        hierarchical = ps.get_hierarchical_context_parallel_groups(check_initialized=False)
    groups = comm_type_groups(cp_comm_type, cp_group, hierarchical)
    return tuple(g if g is not None and dist.get_world_size(g) > 1 else None for g in groups)


class AnchorCoreAttention(MegatronModule):
    """fp32 RoPE on q and k at the layout's positions, then ``anchor_cp_attention`` over the CP group."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        *,
        setup: AnchorAttentionSetup,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
        **kwargs,
    ) -> None:
        super().__init__(config=config)
        if attention_type != "self":
            raise ValueError(f"AnchorCoreAttention supports self-attention only, got {attention_type!r}")
        if config.attention_dropout != 0.0:
            raise ValueError("AnchorCoreAttention has no attention dropout: set attention_dropout=0")
        self.layer_number = layer_number
        self.setup = setup
        self.softmax_scale = softmax_scale
        # megatron-core passes config.cp_comm_type (at CP > 1) and its process groups.
        self.cp_group, self.a2a_group = attention_groups(cp_comm_type or "p2p", pg_collection)

    def _attend(self, query, key, value, plan, angles):
        # fp32 rotation of the first d_rot channels (the rest pass through), cast back to the input dtype.
        rope = dict(mscale=self.setup.mscale, interleaved=self.setup.interleaved)
        query = apply_rotary_angles(query, angles, **rope)  # [s, b, h, d]
        key = apply_rotary_angles(key, angles, **rope)  # [s, b, h_kv, d]
        out = anchor_cp_attention(
            query, key, value, plan=plan, cp_group=self.cp_group, a2a_group=self.a2a_group,
            softmax_scale=self.softmax_scale,
        )  # [s, b, h, d]  # fmt: skip
        return out.reshape(out.shape[0], out.shape[1], -1)  # [s, b, h*d]

    def forward(self, query, key, value, attention_mask, *, packed_seq_params=None, **kwargs):
        """query ``[s, b, h, d]``, key/value ``[s, b, h_kv, d]`` -> ``[s, b, h*d]``; mask from the layout."""
        if not isinstance(packed_seq_params, AnchorLayout):
            raise TypeError(
                "AnchorCoreAttention needs the sample layout: call the model with "
                "packed_seq_params=AnchorLayout(doc_ids=..., positions=...)"
            )
        positions = packed_seq_params.positions  # [b, s_local]
        if positions.shape[1] != query.shape[0]:
            raise ValueError(f"positions cover {positions.shape[1]} tokens, the queries {query.shape[0]}")
        angles = packed_seq_params.rope_angles(self.setup.inv_freq_on(query.device))  # [b, s_local, d_rot/2]
        # Built by the first layer of the micro-batch; every other layer and recompute reuse it.
        plan = packed_seq_params.attention_plan(self.setup.mode, self.cp_group, query.device, self.a2a_group)
        args = (query, key, value, plan, angles)
        if self.setup.recompute and self.training:
            return checkpoint(self._attend, *args, use_reentrant=False)
        return self._attend(*args)


def cp_exchange(model: torch.nn.Module) -> str:
    """How the model's core attention exchanges over CP, read from its groups: ``ring of P``,
    ``all-to-all of A``, ``all-to-all A x ring P`` (``none`` without CP)."""
    core = next((m for m in model.modules() if isinstance(m, AnchorCoreAttention)), None)
    if core is None:
        return "none"
    ring, a2a = (1 if g is None else dist.get_world_size(g) for g in (core.cp_group, core.a2a_group))
    parts = ([f"all-to-all {a2a}"] if a2a > 1 else []) + ([f"ring {ring}"] if ring > 1 else [])
    return " x ".join(parts) or "none"
