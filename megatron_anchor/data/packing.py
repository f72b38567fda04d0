"""Packing documents into samples of a fixed number of tokens (SPEC section 5), as pure functions.

A packer reads document lengths (lazily: any iterable, so a corpus streams through) and yields samples,
each a list of pieces ``(document index, start, end)``: token ranges of documents. Every token of every
document lands in exactly one piece. Every yielded sample holds exactly ``capacity`` tokens except the
last one, which may be partial. The anchor is not part of ``capacity``: the writer puts it in front.

- ``greedy``: input order; a document that does not fit continues in the next sample.
- ``best-fit``: within a window of documents, best-fit-decreasing into samples, then the remaining gaps are
  topped up from the emptiest samples, preferring documents that are already cut. It cuts fewer documents.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Iterable, Iterator

import numpy as np

Piece = tuple[int, int, int]  # (document index, first token, end token) of one document
PACKERS = ("greedy", "best-fit")
DEFAULT_WINDOW = 64  # best-fit: samples' worth of documents considered together


def pack_greedy(lengths: Iterable[int], capacity: int) -> Iterator[list[Piece]]:
    """Samples of ``capacity`` tokens filled in input order; the final partial sample comes last."""
    _check_capacity(capacity)
    sample: list[Piece] = []
    free = capacity
    for doc, length in enumerate(lengths):
        start = 0
        while start < length:
            take = min(free, length - start)
            sample.append((doc, start, start + take))
            start += take
            free -= take
            if free == 0:
                yield sample
                sample, free = [], capacity
    if sample:
        yield sample


def pack_best_fit(
    lengths: Iterable[int], capacity: int, window: int = DEFAULT_WINDOW
) -> Iterator[list[Piece]]:
    """Samples of ``capacity`` tokens by windowed best-fit-decreasing; the final partial sample comes last.

    A document longer than ``capacity`` gives whole samples of its first tokens at once; its tail joins the
    window. Only ``window * capacity`` tokens of pieces are held at a time.
    """
    _check_capacity(capacity)
    pending: list[_Item] = []
    pending_tokens = 0
    for doc, length in enumerate(lengths):
        full = length // capacity
        for k in range(full):
            yield [(doc, k * capacity, (k + 1) * capacity)]
        if length > full * capacity:
            pending.append((doc, full * capacity, length, full > 0))
            pending_tokens += length - full * capacity
        if pending_tokens >= window * capacity:
            samples, pending = _best_fit_round(pending, capacity)
            pending_tokens = sum(end - start for _, start, end, _ in pending)
            yield from samples
    samples, rest = _best_fit_round(pending, capacity)
    yield from samples
    if rest:
        yield [(doc, start, end) for doc, start, end, _ in rest]


def pack(lengths: Iterable[int], capacity: int, mode: str) -> Iterator[list[Piece]]:
    """Dispatch to the packer named ``mode`` (one of ``PACKERS``)."""
    if mode == "greedy":
        return pack_greedy(lengths, capacity)
    if mode == "best-fit":
        return pack_best_fit(lengths, capacity)
    raise ValueError(f"unknown packing mode {mode!r}; expected one of {PACKERS}")


def count_cut_documents(samples: Iterable[list[Piece]], lengths: list[int]) -> int:
    """Number of documents split over more than one piece."""
    return sum(1 for sample in samples for doc, start, end in sample if start == 0 and end < lengths[doc])


def count_greedy_cuts(lengths: Iterable[int], capacity: int) -> int:
    """Documents ``pack_greedy`` cuts, without packing: those straddling a multiple of ``capacity``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    lengths = lengths[lengths > 0]
    ends = np.cumsum(lengths)  # [documents] end offset of each document in the stream
    return int(np.count_nonzero((ends - lengths) // capacity != (ends - 1) // capacity))


def sample_tokens(sample: list[Piece]) -> int:
    """Number of tokens in a sample's pieces."""
    return sum(end - start for _, start, end in sample)


def _check_capacity(capacity: int) -> None:
    if capacity < 1:
        raise ValueError(f"sample capacity must be positive, got {capacity}")


# A piece while packing: (document, start, end, already cut). Cutting a cut document again costs nothing.
_Item = tuple[int, int, int, bool]


def _best_fit_round(items: list[_Item], capacity: int) -> tuple[list[list[Piece]], list[_Item]]:
    """Pack ``items`` into full samples; return them and the pieces left over (under ``capacity``)."""
    bins: list[list[_Item]] = []
    frees: list[int] = []
    open_bins: list[tuple[int, int]] = []  # (free tokens, bin id), sorted
    for item in sorted(items, key=lambda it: (it[1] - it[2], it[0])):  # longest first, stable
        size = item[2] - item[1]
        pos = bisect.bisect_left(open_bins, (size, -1))
        if pos == len(open_bins):
            bins.append([])
            frees.append(capacity)
            bin_id = len(bins) - 1
        else:
            bin_id = open_bins.pop(pos)[1]
        bins[bin_id].append(item)
        frees[bin_id] -= size
        if frees[bin_id] > 0:
            bisect.insort(open_bins, (frees[bin_id], bin_id))
    full = [_pieces(b) for b, free in zip(bins, frees) if free == 0]
    partial = sorted((i for i, free in enumerate(frees) if free > 0), key=lambda i: (frees[i], i))
    filled, leftover = _top_up([bins[i] for i in partial], [frees[i] for i in partial])
    return full + filled, leftover


def _top_up(bins: list[list[_Item]], frees: list[int]) -> tuple[list[list[Piece]], list[_Item]]:
    """Fill the fullest bins with pieces of the emptiest ones; return full samples and the rest."""
    done: list[list[Piece]] = []
    material: deque[_Item] = deque()
    first, last = 0, len(bins) - 1
    while first <= last:
        if frees[first] == 0:
            done.append(_pieces(bins[first]))
            first += 1
        elif material:
            doc, start, end, cut = material.popleft()
            take = min(end - start, frees[first])
            if take < end - start:
                bins[first].append((doc, start, start + take, True))
                material.appendleft((doc, start + take, end, True))
            else:
                bins[first].append((doc, start, end, cut))
            frees[first] -= take
        elif last > first:
            # Already-cut pieces first: they are the ones to cut again at a gap's end.
            material.extend(sorted(bins[last], key=lambda it: (not it[3], it[1] - it[2], it[0])))
            last -= 1
        else:
            return done, bins[first] + list(material)
    return done, list(material)


def _pieces(items: list[_Item]) -> list[Piece]:
    return [(doc, start, end) for doc, start, end, _ in items]
