"""Megatron-LM's own preprocessed datasets read as they are: anchored samples cut on the fly (SPEC 5).

A plain dataset holds one document per index entry (Megatron-LM's ``tools/preprocess_data.py``, usually
with ``--append-eod``; the sentences of a document with ``--split-sentences``). ``AnchorGPTDataset`` is
megatron-core's ``GPTDataset`` with its document, sample and shuffle indices unchanged (the C++
``build_sample_idx``, the same seed, the same cache files) and one difference in what a sample holds:
megatron-core reads ``S + 1`` tokens, consecutive samples sharing one (``add_extra_token_to_sequence``);
here a sample reads ``S`` tokens (``add_extra_token_to_sequence=False``: no overlap) and the anchor takes
the place of the shared token, giving ``S + 1`` in all. So sample ``k`` is the anchor and the stream's
tokens ``[k S, (k + 1) S)``, exactly the greedy-packed sample ``k`` of the same corpus, and every corpus
token is a label exactly once.

Document boundaries: a new document starts at every index entry that does not continue the previous
one (a document cut by the previous sample is a new document here, as in packed samples) and after every
EOD token (entries holding several EOD-separated documents).
"""

from __future__ import annotations

import numpy as np
import torch
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.utils import Split

from megatron_anchor.data.sample import check_token_ids, sample_item


def samples_per_epoch(sequence_lengths: np.ndarray, seq_length: int) -> int:
    """Samples one pass over documents of these lengths gives: their tokens // S (a sample reads ``S`` corpus
    tokens and shares none with the next; the last partial one is dropped)."""
    return int(sequence_lengths.sum(dtype=np.int64)) // seq_length


class AnchorGPTDataset(GPTDataset):
    """One split of a plain dataset: ``GPTDataset``'s samples, each the anchor and ``S`` corpus tokens.

    The config is an ``AnchorDatasetConfig``: its ``tokenizer`` holds the anchor and EOD ids, and with
    ``shuffle`` off the documents and samples keep their file order (for comparisons with packed files).
    """

    def distinct_samples(self) -> int:
        """Samples of this split before repetition (``len`` counts every epoch the run needs)."""
        return samples_per_epoch(self.dataset.sequence_lengths[self.indices], self.config.sequence_length)

    def _build_document_sample_shuffle_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self.indices) == 0 or self._get_num_tokens_per_epoch() <= 1:
            # megatron-core would loop for ever looking for epochs that add tokens, or assert in C++
            return np.zeros(0, np.int32), np.zeros((1, 2), np.int32), np.zeros(0, np.uint32)
        if self.config.shuffle:
            return super()._build_document_sample_shuffle_indices()
        return self._in_order_indices()

    def _in_order_indices(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The documents in file order epoch after epoch, cut by megatron-core's own sample index builder."""
        from megatron.core.datasets import helpers

        tokens_per_epoch = self._get_num_tokens_per_epoch()
        epochs = self._get_num_epochs(tokens_per_epoch)
        document_index = np.tile(self.indices, epochs).astype(np.int32)
        drop_last = self.index_split != Split.valid or self.config.drop_last_partial_validation_sequence
        sample_index = helpers.build_sample_idx(
            self.dataset.sequence_lengths,
            document_index,
            self.config.sequence_length,
            epochs,
            tokens_per_epoch,
            drop_last,
            self.config.add_extra_token_to_sequence,
        )
        return document_index, sample_index, np.arange(len(sample_index) - 1, dtype=np.uint32)

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        """Sample ``idx`` (after the shuffle) as ``sample.sample_item``'s dict of ``[S]`` tensors."""
        sample = int(self.shuffle_index[idx])
        pieces, entries = self._pieces(sample)
        tokens = np.concatenate([piece for piece, _ in pieces])  # [n <= S] corpus tokens
        where = f"{self.dataset.path_prefix}.bin: sample {sample} (index entries {entries[0]}-{entries[-1]})"
        check_token_ids(tokens, self.config.vocab_size, where)
        starts = np.zeros(len(tokens), dtype=bool)  # the token starts a document
        offsets = np.cumsum([0] + [len(piece) for piece, _ in pieces[:-1]])
        starts[offsets[[new for _, new in pieces]]] = True
        eod = self.config.tokenizer.eod
        if eod is not None:
            starts[1:] |= tokens[:-1] == eod
        anchor = np.array([self.config.tokenizer.anchor], dtype=np.int64)
        doc = np.concatenate([[0], np.cumsum(starts)])  # [n + 1]: the anchor is document 0
        return sample_item(
            np.concatenate([anchor, tokens]),
            doc,
            self.config.sequence_length,
            self.config.position_ids,
            self.config.mask_cross_doc_labels,
        )

    def _pieces(self, sample: int) -> tuple[list[tuple[np.ndarray, bool]], list[int]]:
        """The token ranges of sample ``sample`` as ``(tokens, starts a document)``, and the index entries
        they come from. An entry continues the previous piece when it is the next sentence of the same
        index document (``--split-sentences``) and follows it in the document index."""
        (first, start), (last, end) = self.sample_index[sample], self.sample_index[sample + 1]
        lengths = self.dataset.sequence_lengths
        pieces, entries = [], []
        for position in range(int(first), int(last) + 1):
            entry = int(self.document_index[position])
            begin = int(start) if position == first else 0
            stop = int(end) if position == last else int(lengths[entry])
            if stop > begin:
                continues = bool(pieces) and entries[-1] == entry - 1 and not self._opens_document(entry)
                pieces.append((self.dataset.get(entry, begin, stop - begin), not continues))
                entries.append(entry)
        return pieces, entries

    def _opens_document(self, entry: int) -> bool:
        """Whether index entry ``entry`` is the first sequence of an index document."""
        documents = self.dataset.document_indices
        i = int(np.searchsorted(documents, entry))
        return i < len(documents) and int(documents[i]) == entry

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return GPTDataset._key_config_attributes() + ["shuffle", "add_extra_token_to_sequence"]
