"""Which K/V rows each CP rank needs from each other rank, for any layout: host index arithmetic (numpy).

A *layout* gives each of the ``cp`` ranks ``L = S / cp`` global token indices of a sample (``cp_index
[cp, L]``). Inside the attention a rank keeps its tokens in ascending global order, its *local order*. A
*run* is a maximal interval of consecutive global indices with one owner and one document (in ``causal``
mode the whole sample is one document). Query ``i`` sees the keys ``j <= i`` of its own document (the
anchor is folded in separately), hence:

- among a rank's own tokens, visibility is the causal mask of the local order within each document: one
  causal variable-length sequence per document of the rank (ring step 0);
- from another rank ``s``, a run ``u`` of rank ``r`` sees exactly the ``need[u, s]`` tokens of ``s`` in
  its document that precede it, a *prefix* of ``s``'s tokens of that document. ``need`` never decreases
  along ``r``'s runs of a document (they are adjacent in local order), so ``s`` sends the prefix the last
  run needs, and consecutive runs needing the same prefix form one full (non-causal) sequence. Runs of one
  document needing different prefixes become separate kernel calls (*levels*); head-tail splits
  (megatron-core's layout, the balanced layout) need one level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_anchor.parallel.layout_names import check_mode


@dataclass(frozen=True)
class Received:
    """Rank ``r``'s sequences against the prefixes rank ``s`` sends it (one sample; local positions)."""

    q_start: np.ndarray  # [n] first local row of each sequence
    q_len: np.ndarray  # [n] query rows
    key_start: np.ndarray  # [n] first row of the sequence's keys in the received buffer
    key_len: np.ndarray  # [n] keys (a prefix of one document's rows in the buffer)
    level: np.ndarray  # [n] kernel call of the sequence (0 unless a document needs several prefixes)
    docs: np.ndarray  # [m] documents whose prefixes arrive, in buffer order
    prefix: np.ndarray  # [m] rows of each document's prefix

    @property
    def rows(self) -> int:
        """K/V rows in the received buffer."""
        return int(self.prefix.sum())


def _segment_exclusive_cumsum(values: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """Per row, the sum of ``values [R, ...]`` over the earlier rows of its group (groups contiguous)."""
    inclusive = values.cumsum(axis=0)
    first = np.maximum.accumulate(np.where(group_start, np.arange(len(values)), 0))
    return inclusive - values - (inclusive[first] - values[first])


class SampleGeometry:
    """Runs and per-source key counts of one sample under one layout (every rank computes the same)."""

    def __init__(self, doc_row: np.ndarray, cp_index: np.ndarray, mode: str) -> None:
        check_mode(mode)
        seq_len = doc_row.shape[0]
        self.cp, self.local_len = cp_index.shape
        self.mode = mode
        self.sorted_index = np.sort(cp_index, axis=1)  # [cp, L] each rank's tokens in local order
        self.key_doc = np.zeros_like(doc_row) if mode == "causal" else doc_row
        owner = np.empty(seq_len, dtype=np.int64)
        owner[self.sorted_index] = np.arange(self.cp)[:, None]
        pos = np.empty(seq_len, dtype=np.int64)
        pos[self.sorted_index] = np.arange(self.local_len)[None, :]
        self.owner_of_token0, self.pos_of_token0 = int(owner[0]), int(pos[0])
        change = np.ones(seq_len, dtype=bool)
        change[1:] = (owner[1:] != owner[:-1]) | (self.key_doc[1:] != self.key_doc[:-1])
        start = np.flatnonzero(change)
        self.run_len = np.diff(np.append(start, seq_len))
        self.run_owner, self.run_doc, self.run_pos = owner[start], self.key_doc[start], pos[start]
        self.need = self._need()  # [R, cp]
        self.runs_of = [np.flatnonzero(self.run_owner == r) for r in range(self.cp)]

    def _need(self) -> np.ndarray:
        """``need[u, s]``: tokens of rank ``s`` in run ``u``'s document before run ``u`` (0 for its owner)."""
        runs = len(self.run_len)
        dtype = np.int32 if self.run_len.sum() < 2**31 else np.int64
        owned = np.zeros((runs, self.cp), dtype=dtype)
        owned[np.arange(runs), self.run_owner] = self.run_len
        doc_start = np.ones(runs, dtype=bool)
        doc_start[1:] = self.run_doc[1:] != self.run_doc[:-1]
        need = _segment_exclusive_cumsum(owned, doc_start)
        need[np.arange(runs), self.run_owner] = 0
        return need

    def local_docs(self, rank: int) -> np.ndarray:
        """Cumulative row offsets ``[n + 1]`` of the rank's documents in local order (step 0's sequences)."""
        docs = self.key_doc[self.sorted_index[rank]]
        cuts = np.flatnonzero(docs[1:] != docs[:-1]) + 1
        return np.concatenate([[0], cuts, [self.local_len]])

    def received(self, rank: int, src: int) -> Received:
        """What ``rank``'s queries need of ``src``'s K/V rows, as sequences over the received buffer."""
        runs = self.runs_of[rank]
        count = self.need[runs, src]
        runs, count = runs[count > 0], count[count > 0].astype(np.int64)
        if len(runs) == 0:
            empty = np.zeros(0, dtype=np.int64)
            return Received(empty, empty, empty, empty, empty, empty, empty)
        doc, pos, length = self.run_doc[runs], self.run_pos[runs], self.run_len[runs]
        new_seq = np.ones(len(runs), dtype=bool)
        new_seq[1:] = (doc[1:] != doc[:-1]) | (count[1:] != count[:-1])
        seq_id = np.cumsum(new_seq) - 1
        seq_doc, seq_len = doc[new_seq], count[new_seq]
        new_doc = np.ones(len(seq_doc), dtype=bool)
        new_doc[1:] = seq_doc[1:] != seq_doc[:-1]
        doc_id = np.cumsum(new_doc) - 1
        level = np.arange(len(seq_doc)) - np.flatnonzero(new_doc)[doc_id]
        last_of_doc = np.append(np.flatnonzero(new_doc)[1:], len(seq_doc)) - 1
        prefix = seq_len[last_of_doc]  # the longest prefix each document needs (need never decreases)
        doc_offset = np.concatenate([[0], np.cumsum(prefix)[:-1]])
        return Received(
            q_start=pos[new_seq],
            q_len=np.bincount(seq_id, weights=length, minlength=len(seq_doc)).astype(np.int64),
            key_start=doc_offset[doc_id],
            key_len=seq_len,
            level=level,
            docs=seq_doc[last_of_doc],
            prefix=prefix,
        )

    def sent_rows(self, rank: int, dst: int) -> np.ndarray:
        """Local rows ``rank`` sends to ``dst``: per document ``dst`` needs, the prefix, in buffer order."""
        wanted = self.received(dst, rank)
        runs = self.runs_of[rank]
        first = runs[np.searchsorted(self.run_doc[runs], wanted.docs)]  # rank's first run of each document
        starts = self.run_pos[first]
        return concat_ranges(starts, wanted.prefix)

    def _last_and_level(self) -> tuple[np.ndarray, np.ndarray]:
        """Per run: is it its owner's last run of its document; its level ``[R, cp]`` per source."""
        order = np.lexsort((np.arange(len(self.run_len)), self.run_owner, self.run_doc))
        doc, owner = self.run_doc[order], self.run_owner[order]
        first = np.ones(len(order), dtype=bool)
        first[1:] = (doc[1:] != doc[:-1]) | (owner[1:] != owner[:-1])
        last = np.empty(len(order), dtype=bool)
        last[order] = np.append(first[1:], True)
        need = self.need[order]
        prev = np.roll(need, 1, axis=0)
        # A run opens a new level when it needs a longer prefix than the previous run that needed one.
        rises = ((need > prev) & (prev > 0) & ~first[:, None]).astype(np.int64)
        level = np.empty_like(rises)
        level[order] = _segment_exclusive_cumsum(rises, first) + rises
        return last, level

    def received_rows(self) -> np.ndarray:
        """``[cp]`` K/V rows each rank receives over the ring (all sources)."""
        last, _ = self._last_and_level()
        return np.bincount(self.run_owner[last], weights=self.need[last].sum(axis=1), minlength=self.cp)

    def full_calls(self) -> np.ndarray:
        """``[cp, cp]`` kernel calls of full sequences rank ``r`` makes on source ``s``'s rows (levels)."""
        _, level = self._last_and_level()
        calls = np.zeros((self.cp, self.cp), dtype=np.int64)
        np.maximum.at(calls, self.run_owner, np.where(self.need > 0, level + 1, 0))
        return calls

    def anchor_rows(self, rank: int) -> np.ndarray:
        """Bool ``[L]``: local rows that fold the anchor in (anchor mode, outside the anchor's document)."""
        if self.mode != "anchor":
            return np.zeros(self.local_len, dtype=bool)
        return self.key_doc[self.sorted_index[rank]] != self.key_doc[0]


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``concat(arange(a, a + n) for a, n in zip(starts, lengths))`` without a Python loop."""
    starts, lengths = np.asarray(starts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    return np.repeat(starts, lengths) + np.arange(total) - offsets
