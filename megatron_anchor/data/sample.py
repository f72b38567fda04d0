"""One anchored sample as training tensors, whichever dataset it comes from (SPEC sections 1 and 5)."""

from __future__ import annotations

import numpy as np
import torch

from megatron_anchor.data.errors import DataError
from megatron_anchor.data.positions import position_ids_from_doc_ids


def check_token_ids(tokens: np.ndarray, vocab_size: int | None, where: str) -> None:
    """Refuse ids outside ``[0, vocab_size)`` on the host, before they reach the device.

    On the device an id past the embedding's rows is an ``IndexError`` at TP = 1, and at TP > 1
    megatron-core's vocabulary-parallel embedding gives it a zero vector: it would train silently. ``where``
    names the file and the sample.
    """
    if vocab_size is None or tokens.size == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise DataError(
            f"{where} holds token id {bad}, outside the model's vocabulary of {vocab_size:,} ids: data of "
            "another tokenizer? (compare the data's preprocessing with --tokenizer-model / --vocab-size)"
        )


def sample_item(
    tokens: np.ndarray, doc: np.ndarray, seq_length: int, position_ids: str, mask_cross_doc_labels: bool
) -> dict[str, torch.Tensor]:
    """``tokens [n <= S+1]`` (the anchor first) and their document ids ``doc [n]`` (0 for the anchor) as the
    item: ``tokens``, ``labels``, ``doc_ids``, ``position_ids`` ``[S]`` int64 and ``loss_mask [S]`` float32.

    A short sample is padded with the anchor id to ``S + 1``; the padding is one more document and every label
    that is padding gets ``loss_mask`` 0. With ``mask_cross_doc_labels``, a label that is the first token of
    the next document gets ``loss_mask`` 0 (the anchor's label is kept: it plays BOS for document 1).
    """
    total = len(tokens)
    tokens = tokens.astype(np.int64)  # a copy: the reader's arrays may be read-only views of the file
    padding = seq_length + 1 - total
    if padding:
        tokens = np.concatenate([tokens, np.full(padding, tokens[0])])  # [S+1]
        doc = np.concatenate([doc, np.full(padding, doc[-1] + 1)])
    loss_mask = np.ones(seq_length, dtype=np.float32)
    loss_mask[total - 1 :] = 0.0  # labels that are padding
    if mask_cross_doc_labels:
        crossing = doc[1:] != doc[:-1]  # [S]: label j starts a new document
        crossing[0] = False
        loss_mask[crossing] = 0.0
    doc_ids = torch.from_numpy(doc[:-1].astype(np.int64))
    return {
        "tokens": torch.from_numpy(tokens[:-1]),
        "labels": torch.from_numpy(tokens[1:]),
        "loss_mask": torch.from_numpy(loss_mask),
        "doc_ids": doc_ids,
        "position_ids": position_ids_from_doc_ids(doc_ids, position_ids),
    }
