"""Writing packed-anchor samples: one index document of ``S + 1`` tokens per sample (SPEC section 5).

The sequences of a sample's index document are the anchor, then each document piece, so the document
boundaries are the sequence lengths. The final partial sample is written shorter than ``S + 1``
(``--partial-sample pad``; the dataset pads and loss-masks it when reading) or dropped (``drop``).
"""

from __future__ import annotations

import itertools
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from megatron_anchor.data.encode import ChunkResult, KeyTokens
from megatron_anchor.data.indexed_writer import IndexedWriter
from megatron_anchor.data.packing import (
    count_greedy_cuts,
    pack,
    pack_best_fit,
    sample_tokens,
)

WRITE_BATCH = 64  # samples per write


@dataclass
class KeyStats:
    """What was written for one json key."""

    documents: int = 0
    sequences: int = 0
    tokens: int = 0  # tokens of the input documents
    samples: int = 0  # full packed samples written
    documents_cut: dict | None = None  # packer name -> documents cut by it on this corpus
    partial_tokens: int = 0  # document tokens in the final partial sample
    partial_action: str = ""  # "kept" (padded when read) or "dropped"

    def format(self, key: str, pack: str, seq_length: int | None) -> list[str]:
        """Summary lines for this key."""
        lines = [f"[{key}] documents {self.documents:,}, tokens {self.tokens:,}"]
        if pack == "none":
            return lines + [f"[{key}] sequences {self.sequences:,}"]
        sizes = f"{self.samples:,} samples of {seq_length + 1} tokens"
        lines.append(f"[{key}] packed ({pack}, seq-length {seq_length}): {sizes}")
        if self.documents_cut:
            cuts = ", ".join(f"{name} {n:,}" for name, n in self.documents_cut.items())
            lines.append(f"[{key}] documents cut: {cuts}")
        if self.partial_tokens:
            partial = f"[{key}] final partial sample: {self.partial_tokens:,} tokens {self.partial_action}"
            if self.partial_action == "kept":
                partial += f" (the dataset adds {seq_length - self.partial_tokens:,} loss-masked pads)"
            lines.append(partial)
        return lines


def plain_stats(stats: KeyStats, tokens: KeyTokens) -> None:
    """Count a chunk written in plain mode."""
    stats.documents += len(tokens.sequences_per_document)
    stats.sequences += len(tokens.sequence_lengths)
    stats.tokens += len(tokens.tokens)


class PackedStream:
    """One json key's packed samples, pulled sample by sample from the chunk results."""

    def __init__(
        self,
        results: Iterable[ChunkResult],
        key_index: int,
        writer: IndexedWriter,
        anchor: int,
        seq_length: int,
        mode: str,
        partial: str,
    ) -> None:
        self.writer, self.seq_length, self.mode, self.partial = writer, seq_length, mode, partial
        self.anchor = np.array([anchor], dtype=writer.dtype)
        self.chunks_read = 0
        self.lengths = array("q")  # every document's length, for the documents-cut report
        self._store: dict[int, list] = {}  # document -> [tokens, tokens not yet written]
        documents = self._documents(results, key_index)
        self._shadow = None  # greedy runs best-fit alongside, only to report how many documents it would cut
        if mode == "greedy":
            documents, shadow_documents = itertools.tee(documents)
            self._shadow = pack_best_fit(shadow_documents, seq_length)
        self._samples = pack(documents, seq_length, mode)
        self._pending: list[np.ndarray] = []  # samples' arrays not yet written: anchor, then pieces
        self._pending_lengths: list[int] = []
        self._pending_sequences: list[int] = []  # per pending sample
        self._cut = 0
        self._shadow_cut = 0
        self.stats = KeyStats()

    def _documents(self, results: Iterable[ChunkResult], key_index: int) -> Iterator[int]:
        for result in results:
            self.chunks_read += 1
            tokens = result.keys[key_index]
            lengths = tokens.document_lengths()
            ends = np.cumsum(lengths).tolist()
            for end, length in zip(ends, lengths.tolist()):
                self._store[len(self.lengths)] = [tokens.tokens[end - length : end], length]
                self.lengths.append(length)
                yield length

    def step(self) -> bool:
        """Write the next sample; False when there are no more."""
        sample = next(self._samples, None)
        self._step_shadow()  # in step with the real packer, so that it runs while the workers do
        if sample is None:
            self._flush()
            return False
        pieces = [self._take(doc, start, end) for doc, start, end in sample]
        n_tokens = sample_tokens(sample)
        if n_tokens < self.seq_length:  # only the last sample can be partial
            self.stats.partial_tokens = n_tokens
            self.stats.partial_action = "kept" if self.partial == "pad" else "dropped"
            if self.partial == "drop":
                return True
        else:
            self.stats.samples += 1
        self._pending += [self.anchor, *pieces]
        self._pending_lengths += [1] + [len(piece) for piece in pieces]
        self._pending_sequences.append(1 + len(pieces))
        if len(self._pending_sequences) == WRITE_BATCH:
            self._flush()
        return True

    def _flush(self) -> None:
        """Write the pending samples with one call: one index document of ``1 + pieces`` sequences each."""
        if not self._pending_sequences:
            return
        tokens = np.concatenate(self._pending)  # [samples * (S + 1)]
        self.writer.add_documents(tokens, np.array(self._pending_lengths), np.array(self._pending_sequences))
        self._pending, self._pending_lengths, self._pending_sequences = [], [], []

    def _step_shadow(self) -> bool:
        sample = next(self._shadow, None) if self._shadow is not None else None
        if sample is not None:
            self._shadow_cut += sum(1 for doc, start, end in sample if start == 0 and end < self.lengths[doc])
        return sample is not None

    def _take(self, doc: int, start: int, end: int) -> np.ndarray:
        if start == 0 and end < self.lengths[doc]:  # the first piece of a document that is cut
            self._cut += 1
        entry = self._store[doc]
        entry[1] -= end - start
        if entry[1] == 0:
            del self._store[doc]
        return entry[0][start:end]

    def finish(self) -> KeyStats:
        """The stats, with the documents this packer cut and those the other one would cut on this corpus."""
        stats = self.stats
        lengths = self.lengths
        stats.documents, stats.tokens = len(lengths), int(sum(lengths))
        if self.mode == "greedy":
            while self._step_shadow():
                pass
            other = {"best-fit": self._shadow_cut}
        else:
            other = {"greedy": count_greedy_cuts(lengths, self.seq_length)}
        stats.documents_cut = {self.mode: self._cut, **other}
        return stats
