"""Document-aware context-parallel layout: every CP rank gets the same attention work, with no padding.

A query's work is the number of keys it sees (``visible_keys_per_query``): a document of n tokens costs
about n^2 / 2, so megatron-core's fixed chunks give the rank holding a long document's tail far more work
than the others. Here every rank gets exactly ``L = S / cp`` tokens and, within ``TOLERANCE``, ``W / cp``
of the sample's work ``W``, and as few documents as possible are cut (a cut document's prefix travels to
the ranks holding the rest of it).

1. Documents become *items*. One with more work than a rank's share, or more tokens than ``L``, is
   *folded*: its tokens are read head and tail alternately (0, n-1, 1, n-2, ...), so every stretch of the
   folded order has the document's mean work per token, and a rank taking a stretch holds one head piece
   and the mirrored tail piece (megatron-core's head-tail split, sized by work).
2. Items are laid end to end by length (the *arranged order*), so work per token grows along it: first
   the light items (little work each, and at least ``LIGHT_TOKENS`` of the tokens), then the heavy ones.
3. Ranks are filled one by one, the last taking what is left. A rank takes whole heavy items from the
   top and makes up the rest from both ends of the light items: the bottom (the lightest, to dilute) and
   the top (items small enough to fine-tune the work). Among the splits whose work keeps the running
   total within ``TOLERANCE`` of the ideal, it picks the one whose cuts send the fewest rows (an item
   boundary is free, a cut document costs its prefix). When no such take exists, or a folded item tops
   the heavy ones (it is shared by several ranks anyway), it takes the two ends of everything left.
4. Ranks are filled from the last to the first, so a cut document's later part usually sits on rank r
   and its prefix on rank r - 1 (the top stretches take suffixes): the prefix travels at ring step 1,
   behind the local step's compute. Only cuts of the lightest items at the bottom travel backwards.

Every rank holds at most one stretch of each unfolded document (or a prefix and a suffix of it, from its
two light stretches), or nested head-tail pieces of a folded one (two stretches of one folded item never
go to one rank), so it needs one prefix of each document from each other rank: one kernel call per
(rank, source) (``SampleGeometry.full_calls() <= 1``). In ``causal`` mode the sample is one folded
document: megatron-core's layout when S divides by ``2 * cp``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_anchor.parallel.layout_names import check_mode
from megatron_anchor.parallel.work import check_doc_ids, visible_keys_per_query

TOLERANCE = 0.01  # the running work total stays within this fraction of a share: busiest rank <= 1.02x
LIGHT = 0.01  # items with at most this fraction of a share of work are light (fine-tuning material)
LIGHT_TOKENS = 0.7  # and at least this fraction of the tokens is light (dilution material)


def balanced_cp_index(doc_row: torch.Tensor, cp_size: int, mode: str = "anchor") -> torch.Tensor:
    """Each CP rank's global token indices ``[cp_size, S // cp_size]`` int64, ascending, balancing the work.

    ``doc_row [S]``: one sample's document ids; ``mode``: the attention mode whose work is balanced.
    Deterministic: every rank computes the same layout from the same ``doc_row``.
    """
    check_doc_ids(doc_row, "doc_row", dim=1)
    check_mode(mode)
    seq_len = doc_row.shape[0]
    if not isinstance(cp_size, int) or cp_size < 1 or seq_len % cp_size:
        raise ValueError(f"cp_size {cp_size!r} must be a positive divisor of the sequence length {seq_len}")
    if cp_size == 1:
        return torch.arange(seq_len)[None]
    doc_row = doc_row.cpu()
    work = visible_keys_per_query(doc_row, mode).numpy()  # [S] keys each query sees
    docs = np.zeros(seq_len, dtype=np.int64) if mode == "causal" else doc_row.numpy()
    arranged = _arrange(docs, work, cp_size)
    owner = np.empty(seq_len, dtype=np.int16 if cp_size < 2**15 else np.int32)
    owner[arranged.token] = _fill(arranged, cp_size)
    # A stable sort of small integers is a radix sort: each rank's tokens come out in ascending order.
    index = np.argsort(owner, kind="stable").reshape(cp_size, seq_len // cp_size)  # [cp, L]
    return torch.from_numpy(index.astype(np.int64))


@dataclass(frozen=True)
class _Arranged:
    """Tokens in arranged order, with what a cut before each arranged position costs."""

    token: np.ndarray  # [S] global token index at each arranged position
    work_before: np.ndarray  # [S + 1] int64: work of the arranged positions before each one
    cut_cost: np.ndarray  # [S + 1] K/V rows a cut just before each position makes some rank receive
    folded_item: np.ndarray  # [S + 1] id of the folded item at each position, -1 unfolded (and at S)
    heavy_start: int  # first position after the light items


def _arrange(docs: np.ndarray, work: np.ndarray, cp_size: int) -> _Arranged:
    """Documents as items, folded where too heavy for one rank, laid end to end by length."""
    seq_len = docs.shape[0]
    starts = np.flatnonzero(np.concatenate([[True], docs[1:] != docs[:-1]]))
    lengths = np.diff(np.append(starts, seq_len))
    doc_work = np.add.reduceat(work, starts)
    share = work.sum() / cp_size
    folded = (doc_work > share) | (lengths * cp_size > seq_len)
    order = np.argsort(lengths, kind="stable")  # light documents first, ties in sample order
    starts, lengths, folded, doc_work = starts[order], lengths[order], folded[order], doc_work[order]
    ends = np.cumsum(lengths)
    item_start = ends - lengths  # arranged position of each item's first token
    offset = np.arange(seq_len) - np.repeat(item_start, lengths)  # [S] position inside the item
    token = offset + np.repeat(starts, lengths)  # [S] unfolded items keep their order
    # Cutting an unfolded document sends its prefix to the holder of the rest; a folded one is shared
    # by several ranks whatever the cut, so every cut inside it is priced alike (its length).
    cut_cost = np.append(offset, 0)
    light_items = max(
        int((doc_work <= LIGHT * share).sum()), int(np.searchsorted(ends, LIGHT_TOKENS * seq_len))
    )
    folded_item = np.full(seq_len + 1, -1, dtype=np.int64)
    for item in np.flatnonzero(folded):  # at most 2 * cp of them
        first, n, span = starts[item], lengths[item], slice(item_start[item], ends[item])
        # Folded order 0, n-1, 1, n-2, ...: even offsets walk the head forwards, odd ones the tail back.
        token[span] = first + _fold_order(n)
        cut_cost[item_start[item] + 1 : ends[item]] = n
        folded_item[span] = item
    return _Arranged(
        token=token,
        work_before=np.concatenate([[0], np.cumsum(work[token])]),
        cut_cost=cut_cost,
        folded_item=folded_item,
        heavy_start=int(ends[light_items - 1]) if light_items else 0,
    )


def _fold_order(length: int) -> np.ndarray:
    """``0, n-1, 1, n-2, ...``: the head read forwards interleaved with the tail read backwards."""
    order = np.empty(length, dtype=np.int64)
    order[0::2] = np.arange((length + 1) // 2)
    order[1::2] = np.arange(length - 1, (length + 1) // 2 - 1, -1)
    return order


@dataclass
class _Left:
    """Arranged positions still to place: light ``[a0, a1)`` then heavy ``[b0, b1)``, one virtual order.

    Virtual position ``p`` (``0 .. size``) is arranged position ``a0 + p`` below ``a1 - a0``, else
    ``b0 + p - (a1 - a0)``.
    """

    a0: int
    a1: int
    b0: int
    b1: int

    @property
    def size(self) -> int:
        """Positions left."""
        return self.a1 - self.a0 + self.b1 - self.b0

    def light_only(self) -> _Left:
        """The light stretch alone."""
        return _Left(self.a0, self.a1, self.a1, self.a1)

    def values(self, array: np.ndarray, start: int, stop: int) -> np.ndarray:
        """``array`` at the arranged positions of virtual positions ``[start, stop)``."""
        light = self.a1 - self.a0
        if stop <= light:
            return array[self.a0 + start : self.a0 + stop]
        if start >= light:
            return array[self.b0 + start - light : self.b0 + stop - light]
        return np.concatenate([array[self.a0 + start : self.a1], array[self.b0 : self.b0 + stop - light]])

    def work_to(self, before: np.ndarray, start: int, stop: int) -> np.ndarray:
        """Work of virtual positions ``[0, p)`` for ``p`` in ``[start, stop]``."""
        light = self.a1 - self.a0
        cumulative = self.values(before, start, stop + 1) - before[self.a0]
        if stop >= light:  # from the junction on, skip the positions already placed between a1 and b0
            cumulative[max(light - start, 0) :] -= before[self.b0] - before[self.a1]
        return cumulative

    def ranges(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Arranged ranges of virtual positions ``[start, stop)``."""
        light = self.a1 - self.a0
        parts = [
            (self.a0 + start, self.a0 + min(stop, light)),
            (self.b0 + max(start - light, 0), self.b0 + stop - light),
        ]
        return [(i, j) for i, j in parts if i < j]

    def take(self, bottom: int, knob: int, top: int) -> None:
        """Remove ``bottom`` positions from below, ``knob`` from the light top and ``top`` from above."""
        from_heavy = min(top, self.b1 - self.b0)
        self.b1 -= from_heavy
        self.a1 -= top - from_heavy + knob
        from_light = min(bottom, self.a1 - self.a0)
        self.a0 += from_light
        self.b0 += bottom - from_light
        if self.a0 == self.a1:  # light items used up: the heavy ones become the two-ended stretch
            self.a0, self.a1, self.b0 = self.b0, self.b1, self.b1
        if self.b0 == self.b1:  # an empty heavy stretch sits at the junction
            self.b0 = self.b1 = self.a1


def _fill(arranged: _Arranged, cp_size: int) -> np.ndarray:
    """Owner rank ``[S]`` of each arranged position: filled from the last rank, rank 0 taking the rest."""
    seq_len = len(arranged.token)
    local_len = seq_len // cp_size
    share = arranged.work_before[-1] / cp_size
    owner = np.empty(seq_len, dtype=np.int32)
    left = _Left(0, arranged.heavy_start, arranged.heavy_start, seq_len)
    left.take(0, 0, 0)
    surplus = 0.0  # work placed so far beyond the shares of the ranks filled
    for rank in range(cp_size - 1, 0, -1):
        bottom, knob, top, work = _choose(arranged, left, local_len, share - surplus, TOLERANCE * share)
        size, light = left.size, left.a1 - left.a0
        for start, stop in [(0, bottom), (light - knob, light), (size - top, size)]:
            for i, j in left.ranges(start, stop):
                owner[i:j] = rank
        left.take(bottom, knob, top)
        surplus += work - share
    for i, j in left.ranges(0, left.size):
        owner[i:j] = 0
    return owner


def _choose(
    arranged: _Arranged, left: _Left, count: int, want: float, slack: float
) -> tuple[int, int, int, int]:
    """``(bottom, knob, top, work)``: tokens of one rank from the light bottom, light top and heavy top.

    Whole heavy items with the light ends making up the rest where an unfolded item tops the heavy ones
    (a folded one is shared by several ranks anyway); else the two ends of everything left; else (the ends
    alone cannot reach ``want``) the three stretches whatever tops the heavy items; else the closest.
    """
    three = left.a1 > left.a0 and left.b1 > left.b0
    unfolded_top = three and arranged.folded_item[left.b1 - 1] < 0
    attempts = [_three_stretches] if unfolded_top else []
    attempts += [_two_stretches] + ([_three_stretches] if three and not unfolded_top else [])
    best = None
    for attempt in attempts:
        choice = attempt(arranged, left, count, want, slack)
        if choice is not None and (best is None or abs(choice[3] - want) < abs(best[3] - want)):
            best = choice
        if best is not None and abs(best[3] - want) <= slack:
            break
    return best


def _two_stretches(
    arranged: _Arranged, left: _Left, count: int, want: float, slack: float
) -> tuple[int, int, int, int]:
    """The two ends of everything left."""
    top, work = _two_ends(arranged, left, count, want, slack)
    return count - top, 0, top, work


def _three_stretches(
    arranged: _Arranged, left: _Left, count: int, want: float, slack: float
) -> tuple[int, int, int, int] | None:
    """Heavy items from the top, ending on an item boundary, and the two ends of the light ones."""
    top = _heavy_take(arranged, left, count, want, slack)
    if top is None:
        return None
    top_work = int(arranged.work_before[left.b1] - arranged.work_before[left.b1 - top])
    knob, light_work = _two_ends(arranged, left.light_only(), count - top, want - top_work, slack)
    return count - top - knob, knob, top, top_work + light_work


def _heavy_take(arranged: _Arranged, left: _Left, count: int, want: float, slack: float) -> int | None:
    """Tokens ``x`` from the heavy top, ending on an item boundary, that the light ends can complement."""
    light, heavy = left.a1 - left.a0, left.b1 - left.b0
    first, last = max(0, count - light), min(count, heavy)  # the range of x
    before = arranged.work_before
    # Every array below is indexed by x - first.
    heavy_work = before[left.b1] - before[left.b1 - last : left.b1 - first + 1][::-1]
    from_bottom = before[left.a0 + count - last : left.a0 + count - first + 1][::-1] - before[left.a0]
    from_top = before[left.a1] - before[left.a1 - count + first : left.a1 - count + last + 1]
    rest = want - heavy_work
    # >= 0: the light ends can give ``rest`` (one end is usually lighter; which one depends on the cuts)
    margin = np.minimum(rest - np.minimum(from_bottom, from_top), np.maximum(from_bottom, from_top) - rest)
    # A new cut inside an unfolded heavy document sends its prefix; folded ones are shared anyway.
    ends = slice(left.b1 - last, left.b1 - first + 1)  # reversed below: position b1 - x
    cut = arranged.cut_cost[ends][::-1] > 0
    cut[0] &= first > 0  # x = 0 leaves the heavy stretch whole
    margin[cut & (arranged.folded_item[ends][::-1] < 0)] = -np.inf
    if margin.max() < -slack:
        return None
    # Comfortably reachable takes nearest the rank's fair part of the heavy tokens (later ranks keep a
    # mix), else the most reachable one.
    x = np.arange(first, last + 1)
    if margin.max() >= slack:
        fair = count * heavy / (light + heavy)
        return int(x[np.argmin(np.where(margin >= slack, np.abs(x - fair), np.inf))])
    return int(x[np.argmax(margin)])


def _two_ends(
    arranged: _Arranged, left: _Left, count: int, want: float, slack: float
) -> tuple[int, int]:
    """``(top, work)``: ``top`` of ``count`` tokens from the top of ``left``, the rest from below."""
    before, size = arranged.work_before, left.size
    if count == size:  # all of it: nothing to choose
        work = int(left.work_to(before, size, size)[0])
        return 0, work
    # Every array below is indexed by y, the tokens from the top (0 .. count).
    bottom_work = left.work_to(before, 0, count)[::-1]  # work of [0, count - y)
    top_before = left.work_to(before, size - count, size)[::-1]  # work of [0, size - y)
    work = bottom_work + (top_before[0] - top_before)
    cuts = (
        left.values(arranged.cut_cost, 0, count + 1)[::-1]
        + left.values(arranged.cut_cost, size - count, size + 1)[::-1]
    )
    cuts[-1] -= arranged.cut_cost[left.a0]  # y = count: no bottom stretch, no cut there
    cuts[0] = cuts[0] - left.values(arranged.cut_cost, size, size + 1)[0]  # y = 0: no top stretch
    miss = np.abs(work - want)  # float64
    # Two stretches of one folded item on one rank would need two kernel calls per source.
    last_bottom = left.values(arranged.folded_item, 0, count - 1)[::-1]  # y = 1 .. count - 1
    first_top = left.values(arranged.folded_item, size - count + 1, size)[::-1]
    miss[1:-1][(last_bottom >= 0) & (last_bottom == first_top)] = np.inf
    close = miss <= slack
    if close.any():  # the cheapest cuts among the splits within tolerance, then the closest
        miss = np.where(close & (cuts == cuts[close].min()), miss, np.inf)
    top = count - int(np.argmin(miss[::-1]))  # ties: the most from the top
    return top, int(work[top])
