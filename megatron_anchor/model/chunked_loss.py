"""The output layer and the cross-entropy in sequence chunks, each recomputed in backward.

megatron-core computes the logits of the whole sequence, ``[s, b, vocab / tp]``, and its vocabulary-parallel
cross-entropy keeps their fp32 softmax for backward. Sequence parallelism does not split them (every TP
rank holds all tokens' logits of its vocabulary shard): at 16K tokens per rank and a 128K vocabulary at
TP = 2 the softmax alone is 4 GiB kept from forward to backward. Here each chunk of this rank's final
hidden states runs the output layer (which all-gathers the chunk over TP under SP) and the loss inside
activation checkpointing: forward keeps nothing of the logits, backward recomputes one chunk's at a time.
Token losses are computed token by token as megatron-core does, so they are the same.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint


def sequence_shard_size(model: torch.nn.Module) -> int:
    """TP ranks the hidden states are split over along the sequence: the TP size under SP, else 1."""
    layer = model.output_layer
    return layer.tp_group.size() if layer.sequence_parallel else 1


def chunk_label_columns(
    start: int, end: int, shard_len: int, shards: int, device: torch.device | None = None
) -> torch.Tensor:
    """Sequence positions of the rows the output layer gives for shard rows ``[start, end)``.

    Under SP the output layer all-gathers the chunk: TP rank ``r``'s rows come ``r``-th, and its shard
    begins at position ``r * shard_len``. Built on ``device`` (no host-to-device copy).
    """
    rows = torch.arange(start, end, device=device)
    return (torch.arange(shards, device=device)[:, None] * shard_len + rows).flatten()


def _chunk_loss(model, hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None):
    logits, _ = model.output_layer(hidden, weight=weight)  # [rows, b, v / tp]
    return model.compute_language_model_loss(labels, logits)  # [b, rows] fp32


def chunked_language_model_loss(
    model: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk: int
) -> torch.Tensor:
    """Token losses ``[b, s]`` from the final hidden states ``[s / shards, b, h]`` and labels ``[b, s]``.

    ``chunk`` sequence positions of logits at a time (under SP, ``chunk / tp`` rows of each TP rank's
    shard, gathered), recomputed in backward. ``model`` is a megatron-core language model.
    """
    weight = model.shared_embedding_or_output_weight() if model.share_embeddings_and_output_weights else None
    shards, shard_len = sequence_shard_size(model), hidden.shape[0]
    step = max(1, chunk // shards)
    losses, columns = [], []
    for start in range(0, shard_len, step):
        end = min(shard_len, start + step)
        cols = chunk_label_columns(start, end, shard_len, shards, labels.device)
        chunk_labels = labels.index_select(1, cols)
        loss = checkpoint(_chunk_loss, model, hidden[start:end], chunk_labels, weight, use_reentrant=False)
        losses.append(loss)
        columns.append(cols)
    loss = torch.cat(losses, dim=1)  # [b, s] in the order of the chunks' columns
    return loss if shards == 1 else loss.index_select(1, torch.argsort(torch.cat(columns)))
