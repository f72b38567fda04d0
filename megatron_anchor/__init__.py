"""megatron_anchor: long-context pretraining with AnchorAttention on megatron-core.

Layout of the package:
- ``attention/``: anchor-aware context-parallel ring attention (``anchor_cp_attention``).
- ``rope/``: RoPE kept in fp32, context-extension strategies (DPRoPE among them).
- ``data/``: anchor insertion, packing, the indexed dataset and CP slicing of samples.
- ``model/``: the megatron-core GPT model whose core attention is the anchor attention.
- ``training/``: the distributed training loop (``python -m megatron_anchor.pretrain``).
- ``parallel/``: context-parallel layout arithmetic shared by data and attention.
"""

__version__ = "0.1.0"
