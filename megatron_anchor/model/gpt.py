"""The anchor GPT model: megatron-core's GPTModel with the anchor core attention.

The architecture is megatron-core's: LayerNorm or RMSNorm (optionally zero-centred, Megatron's
``--apply-layernorm-1p``), GeLU or SwiGLU, linear biases or none (a qkv bias alone, as Qwen2), tied or
untied embeddings, hidden dropout. ``AnchorGPTConfig``'s defaults are the Llama family's (RMSNorm, SwiGLU,
no biases, untied, no dropout); the trainer sets every field from its flags, whose defaults are Megatron's.
Positions are applied by the core attention (fp32 RoPE), so GPTModel is built with
``position_embedding_type="none"``; the core attention has no dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_anchor.model.chunked_loss import chunked_language_model_loss
from megatron_anchor.model.config import AnchorGPTConfig
from megatron_anchor.model.core_attention import AnchorAttentionSetup
from megatron_anchor.model.layout import AnchorLayout
from megatron_anchor.model.sequence_parallel import use_host_sequence_parallel
from megatron_anchor.model.spec import anchor_block_spec
from megatron_anchor.rope import compute_inv_freq, rotary_dim_for


def rope_frequencies(cfg: AnchorGPTConfig) -> tuple[torch.Tensor, float]:
    """fp64 ``inv_freq [rotary_dim/2]`` and the logit scale for the config's RoPE (with any scaling)."""
    rotary_dim = rotary_dim_for(cfg.head_dim, cfg.rotary_percent)
    inv_freq, mscale = compute_inv_freq(cfg.rotary_base, rotary_dim, cfg.rope_scaling, seq_len=cfg.seq_length)
    return inv_freq.to(torch.float64), float(mscale)


def transformer_config(cfg: AnchorGPTConfig, tp_size: int, cp_size: int) -> TransformerConfig:
    """megatron-core's TransformerConfig for ``cfg``; fp32 parameters, fusions off."""
    return TransformerConfig(
        num_layers=cfg.num_layers,
        hidden_size=cfg.hidden_size,
        ffn_hidden_size=cfg.ffn_hidden_size,
        num_attention_heads=cfg.num_attention_heads,
        num_query_groups=cfg.num_query_groups or cfg.num_attention_heads,
        normalization=cfg.normalization,
        layernorm_zero_centered_gamma=cfg.apply_layernorm_1p,
        layernorm_epsilon=cfg.norm_epsilon,
        gated_linear_unit=cfg.swiglu,  # with silu: SwiGLU
        activation_func=F.silu if cfg.swiglu else F.gelu,
        add_bias_linear=cfg.add_bias_linear,
        add_qkv_bias=cfg.add_qkv_bias,
        hidden_dropout=cfg.hidden_dropout,
        attention_dropout=0.0,
        init_method_std=cfg.init_method_std,
        tensor_model_parallel_size=tp_size,
        context_parallel_size=cp_size,
        sequence_parallel=cfg.sequence_parallel,
        cp_comm_type=cfg.cp_comm_type,  # megatron-core hands it to every core attention at CP > 1
        # CPU initialisation draws the full weight then splits it: the same model at every TP size.
        use_cpu_initialization=not torch.cuda.is_available(),
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=False,
        cross_entropy_loss_fusion=False,
        cuda_graph_scope=[],  # the whole layer; megatron-core's default "full" says the same but warns
        **cfg.extra,
    )


class AnchorGPTModel(GPTModel):
    """GPTModel whose forward takes the packed-sample layout and returns the per-token loss."""

    loss_chunk_tokens: int = 0  # set by build_anchor_gpt from AnchorGPTConfig

    def forward(  # type: ignore[override]
        self, tokens: torch.Tensor, labels: torch.Tensor | None, layout: AnchorLayout
    ) -> torch.Tensor:
        """tokens/labels ``[b, s_local]`` -> loss ``[b, s_local]`` fp32 (or logits ``[s, b, v/tp]``)."""
        return super().forward(
            input_ids=tokens,
            position_ids=None,  # positions live in the layout, applied by the core attention
            attention_mask=None,  # visibility comes from layout.doc_ids
            labels=labels,
            packed_seq_params=layout,
        )

    def _postprocess(self, *, hidden_states, labels, **kwargs):  # megatron-core calls it by keyword
        """The loss in recomputed chunks when ``loss_chunk_tokens`` is set; otherwise megatron-core's."""
        plain = kwargs.get("inference_context") is not None or kwargs.get("mtp_in_postprocess")
        if labels is None or not self.loss_chunk_tokens or plain:
            return super()._postprocess(hidden_states=hidden_states, labels=labels, **kwargs)
        return chunked_language_model_loss(self, hidden_states, labels, self.loss_chunk_tokens)


def build_anchor_gpt(cfg: AnchorGPTConfig, tp_size: int = 1, cp_size: int = 1) -> AnchorGPTModel:
    """Build the model on this rank (parallel_state must be initialised for tp_size/cp_size, and with the
    hierarchical CP groups for ``cfg.cp_comm_type`` a2a+p2p)."""
    if cfg.vocab_size % tp_size:
        raise ValueError(f"padded vocab size {cfg.vocab_size} must divide by TP size {tp_size}")
    inv_freq, mscale = rope_frequencies(cfg)
    setup = AnchorAttentionSetup(
        mode=cfg.attention_mode,
        inv_freq=inv_freq,
        mscale=mscale,
        interleaved=cfg.rotary_interleaved,
        recompute=cfg.recompute_attention,
    )
    model = AnchorGPTModel(
        config=transformer_config(cfg, tp_size, cp_size),
        transformer_layer_spec=anchor_block_spec(setup, cfg.num_layers, cfg.use_te),
        vocab_size=cfg.vocab_size,
        max_sequence_length=cfg.seq_length,
        share_embeddings_and_output_weights=not cfg.untie_embeddings,
        position_embedding_type="none",
        parallel_output=True,
    )
    model.loss_chunk_tokens = cfg.loss_chunk_tokens
    if cfg.sequence_parallel and not torch.cuda.is_available():
        use_host_sequence_parallel(model)  # megatron-core's SP collectives allocate on CUDA
    return model
