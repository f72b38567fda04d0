"""Which layout a ``--data-path`` prefix holds, per prefix: packed-anchor samples or Megatron-LM's plain
documents, and the dataset that reads each (SPEC section 5).

The record beside the files (``data_record``) says it for files this project wrote. Files without one
(Megatron-LM's own output, or packed files of older versions) are told apart by their index: in a packed
file every index document opens with a 1-token sequence (the anchor) followed by the document pieces; a
plain file's first document does not (one sequence per document, or sentences of real text).
"""

from __future__ import annotations

import numpy as np
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_anchor.data.dataset import AnchorPackedDataset
from megatron_anchor.data.indexed_writer import check_indexed_pair

PACKED, PLAIN = "packed", "plain"
PLAIN_NEEDS_TOKENIZER = (
    "a Megatron-LM plain dataset, whose samples start with the tokenizer's anchor (BOS, else EOS): give "
    "--tokenizer-type and --tokenizer-model"
)


def prefix_layout(prefix: str) -> str:
    """``packed`` or ``plain``, after the pair checks of ``check_indexed_pair`` (ValueError naming a file)."""
    record = check_indexed_pair(prefix)
    layout = (record or {}).get("layout")
    if layout in (PACKED, PLAIN):
        return layout
    return PACKED if _anchored(IndexedDataset(prefix)) else PLAIN


def _anchored(indexed: IndexedDataset) -> bool:
    """Every index document opens with a 1-token sequence followed by more (the first one decides at once
    for plain files)."""
    starts, ends = indexed.document_indices[:-1], indexed.document_indices[1:]
    lengths = indexed.sequence_lengths
    if len(starts) == 0 or lengths[starts[0]] != 1 or ends[0] - starts[0] < 2:
        return False
    return bool((lengths[starts] == 1).all() and (ends - starts >= 2).all())


def open_prefix(prefix: str, config) -> AnchorPackedDataset | IndexedDataset:
    """The low-level dataset of ``prefix`` for an ``AnchorDatasetConfig``: the packed samples, or
    megatron-core's ``IndexedDataset`` of a plain file (read by ``AnchorGPTDataset``)."""
    if prefix_layout(prefix) == PACKED:
        return AnchorPackedDataset(
            prefix,
            seq_length=config.sequence_length,
            position_ids=config.position_ids,
            mask_cross_doc_labels=config.mask_cross_doc_labels,
            vocab_size=config.vocab_size,
        )
    if config.tokenizer.anchor is None:
        raise ValueError(f"{prefix}: {PLAIN_NEEDS_TOKENIZER}")
    if config.sequence_length < 2:  # megatron-core's sample index builder asserts it (an abort, no message)
        raise ValueError(f"{prefix}: a Megatron-LM plain dataset needs --seq-length 2 or more")
    return GPTDataset.build_low_level_dataset(prefix, config)


def describe_prefix(prefix: str, seq_length: int) -> tuple[str, str]:
    """The layout of ``prefix`` and one line saying it with its size (ValueError naming the file when it
    cannot be read at ``seq_length``)."""
    if prefix_layout(prefix) == PACKED:
        samples = len(AnchorPackedDataset(prefix, seq_length=seq_length))
        return PACKED, f"data {prefix}: packed-anchor samples, {samples:,} of {seq_length + 1:,} tokens"
    indexed = IndexedDataset(prefix)
    tokens = int(np.sum(indexed.sequence_lengths, dtype=np.int64))
    documents = len(indexed.document_indices) - 1
    return PLAIN, (
        f"data {prefix}: Megatron-LM plain documents ({documents:,} documents, {tokens:,} tokens) read as "
        f"they are: about {tokens // seq_length:,} samples of the anchor + {seq_length:,} tokens, cut as "
        "megatron-core's GPTDataset cuts them"
    )
