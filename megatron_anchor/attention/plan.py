"""Which keys each query block needs: pure index arithmetic over document ids and the CP layout.

In every mode the keys visible to query ``i`` (besides the anchor) are one contiguous range ``[lo_i, i]``:
``lo_i = 0`` for ``causal`` and the start of ``i``'s document for ``intra_doc`` / ``anchor``. The anchor
(key 0 for queries outside document 0) is folded in separately, so it never appears in these tiles.
A *tile* is a (query range, key range) rectangle in global token indices computed by one kernel call:
``full`` (every pair visible), ``causal`` (same range for queries and keys, lower triangle) or ``masked``
(several short documents on the diagonal, with an explicit mask).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from megatron_anchor.attention.reference import ATTENTION_MODES

# Documents shorter than this on a diagonal are grouped into one masked tile (per-call overhead dominates).
MIN_TILE = 64


@dataclass(frozen=True)
class Tile:
    """One kernel call: queries ``[q0, q1)`` against keys ``[k0, k1)`` (global token indices)."""

    q0: int
    q1: int
    k0: int
    k1: int
    kind: str  # "full" | "causal" | "masked"
    mask: torch.Tensor | None = None  # [q1-q0, k1-k0] bool, only for "masked"

    def visible(self) -> int:
        """Number of visible (query, key) pairs in this tile."""
        n, m = self.q1 - self.q0, self.k1 - self.k0
        if self.kind == "causal":
            return n * (n + 1) // 2
        if self.kind == "masked":
            return int(self.mask.sum())
        return n * m

    def computed(self) -> int:
        """Number of (query, key) pairs the kernel evaluates (a masked tile is computed whole)."""
        n, m = self.q1 - self.q0, self.k1 - self.k0
        return n * (n + 1) // 2 if self.kind == "causal" else n * m


def doc_segments(doc_row: torch.Tensor, start: int, end: int) -> list[tuple[int, int]]:
    """Maximal runs ``(a, b)`` of equal document id inside ``[start, end)`` of ``doc_row [S]``."""
    ids = doc_row[start:end]
    cuts = (torch.nonzero(ids[1:] != ids[:-1]).flatten() + 1 + start).tolist()
    bounds = [start, *cuts, end]
    return list(zip(bounds[:-1], bounds[1:]))


def doc_start(doc_row: torch.Tensor, index: int) -> int:
    """First token of the document holding token ``index`` (``doc_row`` non-decreasing)."""
    return int(torch.searchsorted(doc_row, doc_row[index], right=False))


def key_start(doc_row: torch.Tensor, q0: int, mode: str) -> int:
    """Smallest non-anchor key any query in ``[q0, ...)`` of one chunk needs."""
    return 0 if mode == "causal" else doc_start(doc_row, q0)


def diagonal_tiles(
    doc_row: torch.Tensor, q0: int, q1: int, mode: str, min_tile: int = MIN_TILE
) -> list[Tile]:
    """Tiles of a chunk against itself: one causal tile per document, short documents grouped."""
    if mode == "causal":
        return [Tile(q0, q1, q0, q1, "causal")]
    tiles: list[Tile] = []
    group: list[tuple[int, int]] = []
    for seg in doc_segments(doc_row, q0, q1):
        if seg[1] - seg[0] >= min_tile:
            if group:
                tiles.append(_group_tile(doc_row, group))
            tiles.append(Tile(seg[0], seg[1], seg[0], seg[1], "causal"))
            group = []
            continue
        group.append(seg)
        if seg[1] - group[0][0] >= min_tile:
            tiles.append(_group_tile(doc_row, group))
            group = []
    if group:
        tiles.append(_group_tile(doc_row, group))
    return tiles


def _group_tile(doc_row: torch.Tensor, group: list[tuple[int, int]]) -> Tile:
    """One causal tile for a single document, a masked tile for several."""
    a, b = group[0][0], group[-1][1]
    if len(group) == 1:
        return Tile(a, b, a, b, "causal")
    ids = doc_row[a:b]
    mask = (ids[:, None] == ids[None, :]).tril()  # [n, n] block-diagonal causal
    return Tile(a, b, a, b, "masked", mask)


def pair_tiles(
    doc_row: torch.Tensor, q_span: tuple[int, int], k_span: tuple[int, int], mode: str
) -> list[Tile]:
    """Tiles of query chunk ``q_span`` against key rows ``k_span`` (a chunk, or a suffix of one)."""
    (q0, q1), (k0, k1) = q_span, k_span
    if k0 >= k1 or k0 >= q1:
        return []
    if (k0, k1) == (q0, q1):
        return diagonal_tiles(doc_row, q0, q1, mode)
    if k1 > q0:
        raise ValueError(f"key span {k_span} overlaps query chunk {q_span} without being it")
    lo = max(k0, key_start(doc_row, q0, mode))
    if lo >= k1:
        return []
    # Keys before the chunk are seen only by the chunk's first document (all of it for causal).
    rows_end = q1 if mode == "causal" else doc_segments(doc_row, q0, q1)[0][1]
    return [Tile(q0, rows_end, lo, k1, "full")]


def anchor_rows(doc_row: torch.Tensor, q0: int, q1: int) -> tuple[int, int]:
    """Rows of ``[q0, q1)`` that fold the anchor in (those outside document 0; it sees the anchor itself)."""
    first = int(torch.searchsorted(doc_row, torch.tensor(1, dtype=doc_row.dtype), right=False))
    return max(q0, first), q1


def chunk_span(chunk: int, chunk_len: int) -> tuple[int, int]:
    """Global token range of a chunk."""
    return chunk * chunk_len, (chunk + 1) * chunk_len


def rank_chunks(cp_size: int, rank: int) -> tuple[int, ...]:
    """Global chunks a rank holds, in local order (one chunk when ``cp_size == 1``)."""
    return (0,) if cp_size == 1 else (rank, 2 * cp_size - 1 - rank)


def transfer_rows(doc_ids: torch.Tensor, cp_size: int, mode: str) -> torch.Tensor:
    """``[cp, cp, 2]`` int: rows of each source chunk's suffix that ``dst`` needs, ``[src, dst, chunk]``.

    Every rank computes the same table from the full ``doc_ids [b, S]``; a source sends only that suffix.
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")
    chunk_len = doc_ids.shape[1] // (2 * cp_size)
    rows = torch.zeros(cp_size, cp_size, 2, dtype=torch.long)
    for dst in range(cp_size):
        q_chunks = rank_chunks(cp_size, dst)
        for src in range(cp_size):
            if src == dst:
                continue
            for slot, k_chunk in enumerate(rank_chunks(cp_size, src)):
                k0, k1 = chunk_span(k_chunk, chunk_len)
                starts = [
                    max(k0, key_start(row, chunk_span(qc, chunk_len)[0], mode))
                    for qc in q_chunks
                    if qc > k_chunk
                    for row in doc_ids
                ]
                rows[src, dst, slot] = max([0] + [k1 - s for s in starts])
    return rows


@dataclass
class AttentionStats:
    """Work counters of one or more calls (per rank; sum over ranks for the whole sample)."""

    pairs_computed: int = 0  # (sample, query chunk, key chunk) pairs with at least one tile
    pairs_skipped: int = 0  # causally possible pairs the mask empties: no FLOPs spent
    tiles: int = 0  # kernel calls, anchor excluded
    visible: int = 0  # visible (query, key) pairs covered, anchor excluded
    computed: int = 0  # (query, key) pairs the kernels evaluate (>= visible)
    anchor_rows: int = 0  # query rows that fold the broadcast anchor in
    rows_sent: int = 0  # K/V rows sent to other ranks
    rows_not_sent: int = 0  # rows a plain ring would have sent that nobody needed

    def add(self, other: AttentionStats) -> None:
        """Accumulate ``other`` into this object."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class StepPlan:
    """One ring step seen from this rank: whose keys it gets, what it sends, which tiles it runs."""

    src: int
    dst: int
    recv_rows: tuple[int, ...]  # rows of each source chunk's suffix received (step 0: the local chunks)
    send_rows: tuple[int, ...]  # rows of each local chunk's suffix sent to dst
    tiles: list[list[Tile]]  # per sample, in local coordinates (queries: local; keys: the step's buffer)


@dataclass
class RingPlan:
    """Everything one rank computes and sends in one call, derived from doc_ids and the layout alone."""

    chunk_len: int
    steps: list[StepPlan]
    anchor_tiles: list[list[Tile]] | None  # per sample: local rows against the anchor (None: no anchor)
    stats: AttentionStats


def _local(tile: Tile, q_shift: int, k_shift: int) -> Tile:
    return Tile(
        tile.q0 - q_shift, tile.q1 - q_shift, tile.k0 - k_shift, tile.k1 - k_shift, tile.kind, tile.mask
    )


def _step_tiles(
    doc_ids: torch.Tensor,
    q_chunks: tuple[int, ...],
    k_chunks: tuple[int, ...],
    recv: tuple[int, ...],
    chunk_len: int,
    mode: str,
    stats: AttentionStats,
) -> list[list[Tile]]:
    """Per sample, the local tiles of one step's key buffer (the last ``recv[i]`` rows of ``k_chunks[i]``)."""
    tiles: list[list[Tile]] = [[] for _ in range(doc_ids.shape[0])]
    for b, doc_row in enumerate(doc_ids):
        for q_slot, qc in enumerate(q_chunks):
            q_shift, offset = (qc - q_slot) * chunk_len, 0
            for kc, n in zip(k_chunks, recv):
                k_end = chunk_span(kc, chunk_len)[1]
                found = pair_tiles(doc_row, chunk_span(qc, chunk_len), (k_end - n, k_end), mode)
                tiles[b] += [_local(t, q_shift, k_end - n - offset) for t in found]
                stats.pairs_computed += bool(found)
                stats.pairs_skipped += kc <= qc and not found
                stats.visible += sum(t.visible() for t in found)
                stats.computed += sum(t.computed() for t in found)
                offset += n
        stats.tiles += len(tiles[b])
    return tiles


def build_ring_plan(doc_ids: torch.Tensor, cp_size: int, rank: int, mode: str) -> RingPlan:
    """Plan of CP ``rank``: per ring step its tiles (local coordinates) and transfer sizes."""
    doc_ids = doc_ids.cpu()
    chunk_len = doc_ids.shape[1] // (2 * cp_size) if cp_size > 1 else doc_ids.shape[1]
    rows = transfer_rows(doc_ids, cp_size, mode) if cp_size > 1 else None
    stats = AttentionStats()
    q_chunks = rank_chunks(cp_size, rank)
    steps = []
    for step in range(cp_size):
        src, dst = (rank - step) % cp_size, (rank + step) % cp_size
        if step == 0:
            recv, send = (chunk_len,) * len(q_chunks), (0,) * len(q_chunks)
        else:
            recv, send = tuple(rows[src, rank].tolist()), tuple(rows[rank, dst].tolist())
            stats.rows_sent += sum(send)
            stats.rows_not_sent += len(send) * chunk_len - sum(send)
        tiles = _step_tiles(doc_ids, q_chunks, rank_chunks(cp_size, src), recv, chunk_len, mode, stats)
        steps.append(StepPlan(src, dst, recv, send, tiles))
    anchor_tiles = _anchor_tiles(doc_ids, q_chunks, chunk_len, mode)
    stats.anchor_rows = sum(t.q1 - t.q0 for per_sample in anchor_tiles or [] for t in per_sample)
    return RingPlan(chunk_len, steps, anchor_tiles, stats)


def _anchor_tiles(doc_ids: torch.Tensor, q_chunks: tuple[int, ...], chunk_len: int, mode: str):
    """Per sample, full tiles of the local rows outside document 0 against the anchor (None unless anchor)."""
    if mode != "anchor":
        return None
    result: list[list[Tile]] = [[] for _ in range(doc_ids.shape[0])]
    for b, doc_row in enumerate(doc_ids):
        for slot, qc in enumerate(q_chunks):
            a, e = anchor_rows(doc_row, *chunk_span(qc, chunk_len))
            shift = qc * chunk_len - slot * chunk_len
            if a < e:
                result[b].append(Tile(a - shift, e - shift, 0, 1, "full"))
    return result
