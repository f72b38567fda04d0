"""The packed-anchor dataset: samples of ``S + 1`` tokens as training tensors (SPEC sections 1 and 5)."""

from __future__ import annotations

import numpy as np
import torch

from megatron_anchor.data.indexed_writer import check_indexed_pair
from megatron_anchor.data.position_modes import POSITION_MODES
from megatron_anchor.data.sample import check_token_ids, sample_item


class AnchorPackedDataset(torch.utils.data.Dataset):
    """Packed-anchor samples read through megatron-core's ``IndexedDataset``.

    Each index document is one sample of ``S + 1`` tokens: its first sequence is the 1-token anchor
    (document 0), every further sequence is a document (piece). Only the last index document may be shorter
    (a partial sample kept with ``--partial-sample pad``): ``sample.sample_item`` pads and loss-masks it.
    Item ``i`` is ``sample_item``'s dict; with ``vocab_size``, a token id outside ``[0, vocab_size)`` is a
    ``DataError`` naming the file and the sample.
    """

    def __init__(
        self,
        path_prefix: str,
        *,
        seq_length: int,
        position_ids: str = "global",
        mask_cross_doc_labels: bool = False,
        vocab_size: int | None = None,
    ) -> None:
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        if position_ids not in POSITION_MODES:
            raise ValueError(f"position_ids {position_ids!r}: expected one of {POSITION_MODES}")
        self.path_prefix = path_prefix
        self.seq_length = seq_length
        self.position_ids = position_ids
        self.mask_cross_doc_labels = mask_cross_doc_labels
        self.vocab_size = vocab_size
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
        tokens = self.indexed.get(first, 0, int(lengths.sum()))  # [n <= S+1]
        check_token_ids(tokens, self.vocab_size, f"{self.path_prefix}.bin: sample {index}")
        doc = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)  # [n]
        return sample_item(tokens, doc, self.seq_length, self.position_ids, self.mask_cross_doc_labels)
