"""The layer spec: megatron-core's GPT layer with the anchor core attention in its one attention slot."""

from __future__ import annotations

import functools

from megatron.core.models.gpt.gpt_layer_specs import (
    get_gpt_layer_local_spec,
    get_gpt_layer_with_transformer_engine_spec,
)
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules

from megatron_anchor.model.core_attention import AnchorAttentionSetup, AnchorCoreAttention
from megatron_anchor.model.sequence_parallel import TorchNorm


def transformer_engine_available() -> bool:
    """True when Transformer Engine imports (it needs CUDA and cuDNN; a meta-package alone fails)."""
    try:
        import transformer_engine  # noqa: F401
    except Exception:  # an installed TE without CUDA raises OSError/RuntimeError, not only ImportError
        return False
    return True


def anchor_layer_spec(setup: AnchorAttentionSetup, use_te: bool | None = None) -> ModuleSpec:
    """megatron-core's GPT layer spec whose core attention is the anchor attention. The norm, activation,
    biases and dropout come from the TransformerConfig the layers are built with.

    Transformer Engine layers when TE imports (or ``use_te=True``), megatron-core's local layers otherwise.
    """
    use_te = transformer_engine_available() if use_te is None else use_te
    if use_te:
        spec = get_gpt_layer_with_transformer_engine_spec()
    else:
        spec = get_gpt_layer_local_spec()
        # megatron-core's torch norm refuses sequence parallelism and zero-centred weights; this one accepts
        # them (same parameters), LayerNorm or RMSNorm by the config.
        spec.submodules.input_layernorm = TorchNorm
        spec.submodules.pre_mlp_layernorm = TorchNorm
    # SelfAttention calls submodules.core_attention(config=..., layer_number=..., ...) directly, so the
    # slot holds a callable; partial() binds the run-wide setup to the documented constructor.
    spec.submodules.self_attention.submodules.core_attention = functools.partial(
        AnchorCoreAttention, setup=setup
    )
    return spec


def anchor_block_spec(
    setup: AnchorAttentionSetup, num_layers: int, use_te: bool | None = None
) -> ModuleSpec | TransformerBlockSubmodules:
    """The decoder: ``num_layers`` anchor layers and a final norm that accepts sequence parallelism.

    With TE megatron-core adds TE's final norm itself; the local layers get ``TorchNorm``.
    """
    use_te = transformer_engine_available() if use_te is None else use_te
    layer = anchor_layer_spec(setup, use_te)
    if use_te:
        return layer
    return TransformerBlockSubmodules(layer_specs=[layer] * num_layers, layer_norm=TorchNorm)
