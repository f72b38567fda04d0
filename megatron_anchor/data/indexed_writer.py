"""Writing megatron-core ``MMIDIDX`` ``.bin/.idx`` pairs with numpy, under temporary names until complete.

The bytes are exactly those of megatron-core's ``IndexedDatasetBuilder`` (tests compare them), and
megatron-core's ``IndexedDataset`` reads the files unchanged. It is written here rather than imported
because importing megatron-core costs seconds per run (more than tokenizing tens of MB), and its builder
keeps every sequence length as a Python int and computes the pointers in a Python loop; here they are numpy
arrays, one per chunk of documents.
"""

from __future__ import annotations

import os
import struct

import numpy as np

INDEX_HEADER = b"MMIDIDX\x00\x00"  # megatron.core.datasets.indexed_dataset._INDEX_HEADER
INDEX_VERSION = 1
# megatron.core.datasets.indexed_dataset.DType codes
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.uint16: 8}


def token_dtype(vocab_size: int) -> type:
    """megatron-core's ``DType.optimal_dtype``: uint16 for vocabularies under 65500 ids, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


class IndexedWriter:
    """Documents in, ``{prefix}.bin`` / ``{prefix}.idx`` out; nothing under the final names until ``commit``.

    Writes go to ``{prefix}.bin.tmp``; ``commit`` writes ``{prefix}.idx.tmp`` and renames the ``.bin`` then
    the ``.idx`` into place (a reader needs both). ``abort`` removes the temporary files, so a failed or
    interrupted run leaves nothing that looks complete.
    """

    def __init__(self, prefix: str, dtype: type) -> None:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {dtype}")
        directory = os.path.dirname(prefix)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self.prefix, self.dtype = prefix, dtype
        self.tmp_bin, self.tmp_idx = prefix + ".bin.tmp", prefix + ".idx.tmp"
        self._bin = open(self.tmp_bin, "wb")  # closed by commit or abort
        self._sequence_lengths: list[np.ndarray] = []
        self._document_ends: list[np.ndarray] = []
        self._sequences = 0

    def add_documents(
        self, tokens: np.ndarray, sequence_lengths: np.ndarray, sequences_per_document: np.ndarray
    ) -> None:
        """Append documents: ``tokens [n]``, ``sequence_lengths [seqs]``, ``sequences_per_document [d]``."""
        consistent = int(np.sum(sequence_lengths)) == len(tokens)
        if not consistent or int(np.sum(sequences_per_document)) != len(sequence_lengths):
            raise ValueError("tokens, sequence lengths and sequences per document do not add up")
        self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._sequence_lengths.append(np.asarray(sequence_lengths, dtype=np.int32))
        self._document_ends.append(self._sequences + np.cumsum(sequences_per_document, dtype=np.int64))
        self._sequences += len(sequence_lengths)

    def add_document(self, tokens: np.ndarray, sequence_lengths: list[int]) -> None:
        """Append one document ``tokens [n]`` made of sequences of the given lengths."""
        self.add_documents(tokens, np.asarray(sequence_lengths), np.array([len(sequence_lengths)]))

    def commit(self) -> tuple[str, str]:
        """Write the index and move both files to their final names; return ``(bin, idx)`` paths."""
        self._bin.close()
        lengths = np.concatenate([np.zeros(0, np.int32), *self._sequence_lengths])  # [sequences] int32
        pointers = np.zeros(len(lengths), dtype=np.int64)  # byte offset of each sequence
        np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(self.dtype).itemsize, out=pointers[1:])
        document_indices = np.concatenate([np.zeros(1, np.int64), *self._document_ends])  # [docs + 1]
        with open(self.tmp_idx, "wb") as idx:
            idx.write(INDEX_HEADER)
            idx.write(struct.pack("<Q", INDEX_VERSION))
            idx.write(struct.pack("<B", DTYPE_CODES[self.dtype]))
            idx.write(struct.pack("<Q", len(lengths)))
            idx.write(struct.pack("<Q", len(document_indices)))
            for array in (lengths, pointers, document_indices):
                idx.write(array.tobytes(order="C"))
        final_bin, final_idx = self.prefix + ".bin", self.prefix + ".idx"
        os.replace(self.tmp_bin, final_bin)
        os.replace(self.tmp_idx, final_idx)
        return final_bin, final_idx

    def abort(self) -> None:
        """Close and delete the temporary files."""
        self._bin.close()
        for path in (self.tmp_bin, self.tmp_idx):
            if os.path.exists(path):
                os.remove(path)
