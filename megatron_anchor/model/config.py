"""The model's shape and attention settings as plain data (no torch or megatron-core), so that the converter
and the flag checks build and record it without importing the training stack."""

from __future__ import annotations

from dataclasses import dataclass, field

from megatron_anchor.rope.scaling import RopeScaling


@dataclass(frozen=True)
class AnchorGPTConfig:
    """Shape and attention settings of the model (parallel sizes come from parallel_state)."""

    num_layers: int
    hidden_size: int
    ffn_hidden_size: int
    num_attention_heads: int
    vocab_size: int
    """Padded vocabulary size (divisible by the tensor-parallel size)."""
    seq_length: int
    num_query_groups: int | None = None
    """Key/value heads (GQA); None means as many as query heads."""
    attention_mode: str = "anchor"
    rotary_base: float = 10000.0
    rotary_percent: float = 1.0
    rotary_interleaved: bool = False
    rope_scaling: RopeScaling | None = None
    """Context-extension strategy (PI, NTK, YaRN, Llama 3.1, LongRoPE, DPRoPE, ...) or None."""
    add_qkv_bias: bool = False
    untie_embeddings: bool = True
    init_method_std: float = 0.02
    norm_epsilon: float = 1e-5
    recompute_attention: bool = False
    """Selective recompute: the core attention is recomputed in backward."""
    sequence_parallel: bool = False
    """Shard norms, residuals and embeddings along the sequence inside each TP group (needs TP > 1)."""
    loss_chunk_tokens: int = 0
    """Output layer and loss over this many sequence positions at a time, recomputed in backward (0: off)."""
    use_te: bool | None = None
    """Transformer Engine layers: None picks them when TE imports."""
    extra: dict = field(default_factory=dict)
    """Further TransformerConfig fields (advanced)."""

    @property
    def head_dim(self) -> int:
        """Channels per attention head."""
        return self.hidden_size // self.num_attention_heads
