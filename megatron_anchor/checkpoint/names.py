"""Tensor names that differ between megatron-core's layer specs, so that either spec reads the other's
checkpoints (torch-free): Transformer Engine's layers fuse the pre-norms into the next linear layer; and the
suffix of the entries that are no weights (``EXTRA_STATE``)."""

from __future__ import annotations

# The state-dict key suffix of a module's extra state (TE's FP8 metadata): stored with the weights, not one.
EXTRA_STATE = "._extra_state"
# Local spec name suffix -> Transformer Engine spec name suffix (TE fuses the pre-norms into the linears).
TE_RENAMES = {
    "input_layernorm.weight": "self_attention.linear_qkv.layer_norm_weight",
    "input_layernorm.bias": "self_attention.linear_qkv.layer_norm_bias",
    "pre_mlp_layernorm.weight": "mlp.linear_fc1.layer_norm_weight",
    "pre_mlp_layernorm.bias": "mlp.linear_fc1.layer_norm_bias",
}


def te_name(name: str) -> str:
    """The Transformer Engine spec's name for local-spec tensor ``name`` (unchanged where they agree)."""
    for local, te in TE_RENAMES.items():
        if name.endswith(local):
            return name[: -len(local)] + te
    return name
