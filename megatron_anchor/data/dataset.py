"""The packed-anchor dataset: samples of ``S + 1`` tokens as training tensors (SPEC sections 1 and 5)."""

from __future__ import annotations

import numpy as np
import torch

from megatron_anchor.data.indexed_writer import check_indexed_pair
from megatron_anchor.data.positions import POSITION_MODES, position_ids_from_doc_ids


class AnchorPackedDataset(torch.utils.data.Dataset):
    """Packed-anchor samples read through megatron-core's ``IndexedDataset``.

    Each index document is one sample of ``S + 1`` tokens: its first sequence is the 1-token anchor
    (document 0), every further sequence is a document (piece). Only the last index document may be shorter
    (a partial sample kept with ``--partial-sample pad``): it is padded here with the anchor id, and every
    label that is padding gets ``loss_mask`` 0. Padding is one more document, so it never joins the text's.

    Item ``i``: ``tokens``, ``labels`` (tokens shifted by one), ``doc_ids``, ``position_ids``: ``[S]`` int64;
    ``loss_mask``: ``[S]`` float32. With ``mask_cross_doc_labels``, a label that is the first token of the
    next document gets ``loss_mask`` 0 (the anchor's label is kept: it plays BOS for document 1).
    """

    def __init__(
        self,
        path_prefix: str,
        *,
        seq_length: int,
        position_ids: str = "global",
        mask_cross_doc_labels: bool = False,
    ) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        if position_ids not in POSITION_MODES:
            raise ValueError(f"position_ids {position_ids!r}: expected one of {POSITION_MODES}")
        self.path_prefix = path_prefix
        self.seq_length = seq_length
        self.position_ids = position_ids
        self.mask_cross_doc_labels = mask_cross_doc_labels
        check_indexed_pair(path_prefix)  # megatron-core reads any .bin beside the .idx without a check
        self.indexed = IndexedDataset(path_prefix)
        self._sequence_lengths = self.indexed.sequence_lengths
        self._document_indices = self.indexed.document_indices
        self._validate()

    def _validate(self) -> None:
        """Every index document is an anchor plus ``S`` tokens (the last one may be shorter)."""
        starts, ends = self._document_indices[:-1], self._document_indices[1:]
        where = f"{self.path_prefix}.idx"
        if len(starts) and (ends <= starts).any():
            raise ValueError(f"{where}: empty index document {int(np.argmax(ends <= starts))}")
        totals = np.add.reduceat(self._sequence_lengths.astype(np.int64), starts) if len(starts) else starts
        expected = self.seq_length + 1
        wrong = np.flatnonzero(totals[:-1] != expected)
        if len(totals) and totals[-1] > expected:
            wrong = np.append(wrong, len(totals) - 1)
        if len(wrong):
            i = int(wrong[0])
            raise ValueError(
                f"{where}: sample {i} has {int(totals[i])} tokens but seq_length {self.seq_length} needs "
                f"{expected} ({len(wrong)} samples differ); preprocess with --seq-length {self.seq_length}"
            )
        anchors = self._sequence_lengths[starts]
        if (anchors != 1).any():
            i = int(np.argmax(anchors != 1))
            raise ValueError(f"{where}: sample {i} does not start with a 1-token anchor sequence")

    def __len__(self) -> int:
        return len(self._document_indices) - 1

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        first, end = int(self._document_indices[index]), int(self._document_indices[index + 1])
        lengths = self._sequence_lengths[first:end]
        total = int(lengths.sum())
        tokens = self.indexed.get(first, 0, total).astype(np.int64)  # [n <= S+1]
        doc = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # [n]
        padding = self.seq_length + 1 - total
        if padding:
            tokens = np.concatenate([tokens, np.full(padding, tokens[0])])  # [S+1]
            doc = np.concatenate([doc, np.full(padding, len(lengths))])
        loss_mask = np.ones(self.seq_length, dtype=np.float32)
        loss_mask[total - 1 :] = 0.0  # labels that are padding
        if self.mask_cross_doc_labels:
            crossing = doc[1:] != doc[:-1]  # [S]: label j starts a new document
            crossing[0] = False
            loss_mask[crossing] = 0.0
        doc_ids = torch.from_numpy(doc[:-1])
        return {
            "tokens": torch.from_numpy(tokens[:-1]),
            "labels": torch.from_numpy(tokens[1:]),
            "loss_mask": torch.from_numpy(loss_mask),
            "doc_ids": doc_ids,
            "position_ids": position_ids_from_doc_ids(doc_ids, self.position_ids),
        }
