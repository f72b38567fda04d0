"""The ring plan's index arithmetic, checked against the dense mask without any process group."""

from __future__ import annotations

import pytest
import torch
from cp_harness import layout

from megatron_anchor.attention import visibility_mask
from megatron_anchor.attention.plan import (
    build_ring_plan,
    chunk_span,
    doc_segments,
    pair_tiles,
    rank_chunks,
    transfer_rows,
)
from megatron_anchor.parallel.cp_layout import cp_token_index


def test_doc_segments_and_pair_tiles():
    doc_row = torch.tensor([0, 1, 1, 1, 2, 2, 3, 3])
    assert doc_segments(doc_row, 0, 8) == [(0, 1), (1, 4), (4, 6), (6, 8)]
    assert doc_segments(doc_row, 2, 5) == [(2, 4), (4, 5)]
    # keys [0, 4) for queries [4, 8): only document 2's rows could look back, and document 2 starts at 4
    assert pair_tiles(doc_row, (4, 8), (0, 4), "intra_doc") == []
    (tile,) = pair_tiles(doc_row, (4, 8), (0, 4), "causal")
    assert (tile.q0, tile.q1, tile.k0, tile.k1, tile.kind) == (4, 8, 0, 4, "full")
    (tile,) = pair_tiles(doc_row, (2, 4), (0, 2), "anchor")  # document 1 started in the earlier chunk
    assert (tile.q0, tile.q1, tile.k0, tile.k1, tile.kind) == (2, 4, 1, 2, "full")


def test_transfer_rows_causal_sends_every_earlier_chunk():
    doc_ids = layout("tiny", 32, 0)[None]
    rows = transfer_rows(doc_ids, 2, "causal")  # rank 0 holds chunks (0, 3), rank 1 holds (1, 2)
    assert rows[0, 1].tolist() == [8, 0] and rows[1, 0].tolist() == [8, 8]


def _key_index(plan, step, cp, rank) -> torch.Tensor:
    """Global token index of every row of a step's key buffer."""
    sp = plan.steps[step]
    if step == 0:
        return cp_token_index(plan.chunk_len * (2 if cp > 1 else 1) * cp, cp, rank)
    ends = [chunk_span(c, plan.chunk_len)[1] for c in rank_chunks(cp, sp.src)]
    return torch.cat([torch.arange(end - n, end) for end, n in zip(ends, sp.recv_rows)])


@pytest.mark.parametrize("cp", [1, 2, 4])
@pytest.mark.parametrize("mode", ["causal", "intra_doc", "anchor"])
def test_tiles_cover_the_mask_exactly_once(cp, mode):
    seq_len = 256
    doc_ids = torch.stack(
        [layout(n, seq_len, i) for i, n in enumerate(["tiny", "lognormal", "one_doc", "sparse"])]
    )
    cover = torch.zeros(doc_ids.shape[0], seq_len, seq_len, dtype=torch.long)
    anchor_cover = torch.zeros(doc_ids.shape[0], seq_len, dtype=torch.long)
    for rank in range(cp):
        plan = build_ring_plan(doc_ids, cp, rank, mode)
        q_index = cp_token_index(seq_len, cp, rank)
        for step in range(cp):
            k_index = _key_index(plan, step, cp, rank)
            for b, tiles in enumerate(plan.steps[step].tiles):
                for t in tiles:
                    block = {
                        "full": torch.ones(t.q1 - t.q0, t.k1 - t.k0, dtype=torch.long),
                        "causal": torch.ones(t.q1 - t.q0, t.q1 - t.q0, dtype=torch.long).tril(),
                        "masked": t.mask,
                    }[t.kind]
                    rows, cols = q_index[t.q0 : t.q1], k_index[t.k0 : t.k1]
                    cover[b][rows[:, None], cols[None, :]] += block.long()
        for b, tiles in enumerate(plan.anchor_tiles or []):
            for t in tiles:
                anchor_cover[b, q_index[t.q0 : t.q1]] += 1
    mask = visibility_mask(doc_ids, mode)
    if mode == "anchor":
        outside = doc_ids > 0
        assert torch.equal(anchor_cover, outside.long())
        mask[:, :, 0] &= ~outside
    assert torch.equal(cover, mask.long())
