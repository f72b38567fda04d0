"""The CP communication types as arithmetic: degrees, K/V head repetition, hierarchical ranks, the layout
over the ring's groups and a rank's work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_anchor.attention.heads import expand_kv_heads
from megatron_anchor.parallel import batch_cp_index, megatron_cp_index, rank_work, visible_keys_per_query
from megatron_anchor.parallel.comm_types import (
    CPDegrees,
    comm_type_groups,
    cp_degrees,
    hierarchical_groups,
    hierarchical_ranks,
    kv_head_repeat,
    kv_repeat_note,
)


def test_degrees_of_each_type():
    assert cp_degrees("p2p", 8) == CPDegrees(1, 8)
    assert cp_degrees("a2a", 8) == CPDegrees(8, 1)
    assert cp_degrees("a2a+p2p", 8, [4, 2]) == CPDegrees(4, 2)
    with pytest.raises(ValueError, match="needs --hierarchical-context-parallel-sizes"):
        cp_degrees("a2a+p2p", 8)
    with pytest.raises(ValueError, match="product 6 must equal --context-parallel-size 8"):
        cp_degrees("a2a+p2p", 8, [3, 2])
    with pytest.raises(ValueError, match="give two sizes"):
        cp_degrees("a2a+p2p", 8, [2, 2, 2])


@pytest.mark.parametrize(
    "heads,heads_kv,degree,repeat", [(8, 8, 4, 1), (8, 2, 4, 2), (8, 1, 8, 8), (12, 4, 6, 3)]
)
def test_repeated_kv_heads_split_with_the_query_heads(heads, heads_kv, degree, repeat):
    """After repeating, each rank's query heads use only K/V heads it holds, and the same ones as before."""
    assert kv_head_repeat(heads, heads_kv, degree) == repeat
    kv = torch.arange(heads_kv)[None, :]  # K/V head ids
    repeated = expand_kv_heads(kv, heads_kv * repeat)  # [1, h_kv * r]
    per_rank_q, per_rank_kv = heads // degree, heads_kv * repeat // degree
    for rank in range(degree):
        mine = repeated[0, rank * per_rank_kv : (rank + 1) * per_rank_kv]
        for j in range(rank * per_rank_q, (rank + 1) * per_rank_q):
            local = j - rank * per_rank_q
            assert mine[local // (per_rank_q // per_rank_kv)] == j // (heads // heads_kv)


def test_a_degree_that_cannot_split_the_query_heads_names_both():
    with pytest.raises(ValueError, match="degree 4 .* must divide the 6 query heads"):
        kv_head_repeat(6, 2, 4)


@pytest.mark.parametrize("sizes", [(2, 2), (4, 2), (2, 4), (8, 1), (1, 8)])
def test_hierarchical_ranks_are_megatron_cores(sizes):
    """megatron-core's create_hierarchical_groups: einops ``(l s u) -> (l u) s`` with u the product of the
    levels below, s the level's size, l of those above (core_v0.16.0 parallel_state.py), in numpy."""
    ranks = np.arange(100, 100 + sizes[0] * sizes[1])
    expected = []
    for level in range(2):
        u, s, lo = int(np.prod(sizes[:level])), sizes[level], int(np.prod(sizes[level + 1 :]))
        expected.append(ranks.reshape(lo, s, u).transpose(0, 2, 1).reshape(lo * u, s).tolist())
    assert list(hierarchical_ranks(ranks.tolist(), sizes[0])) == expected


def test_comm_types_map_to_ring_and_all_to_all_groups_with_one_message_for_an_unknown_type():
    assert comm_type_groups("p2p", "cp") == ("cp", None) and comm_type_groups("a2a", "cp") == (None, "cp")
    assert comm_type_groups("a2a+p2p", "cp", ["inner", "outer"]) == ("outer", "inner")
    with pytest.raises(ValueError, match=r"a2a\+p2p needs the hierarchical CP groups \[inner, outer\]"):
        comm_type_groups("a2a+p2p", "cp")
    for call in (lambda: comm_type_groups("ring", "cp"), lambda: cp_degrees("ring", 4)):
        with pytest.raises(ValueError, match=r"^--cp-comm-type ring: expected one of p2p, a2a, a2a\+p2p$"):
            call()


def test_hierarchical_groups_are_made_in_one_order_on_every_rank():
    """torch.distributed.new_group must be called for every group, in the same order, on every rank."""
    for rank in range(8):
        made = []

        def new_group(ranks, made=made):
            made.append(ranks)
            return tuple(ranks)

        mine = hierarchical_groups(rank, list(range(8)), 2, new_group)
        assert made == [[0, 1], [2, 3], [4, 5], [6, 7], [0, 2, 4, 6], [1, 3, 5, 7]]
        assert mine == [(rank - rank % 2, rank - rank % 2 + 1), tuple(range(rank % 2, 8, 2))]


def test_kv_repeat_note_counts_the_bytes_of_llama3_8b():
    """Llama-3-8B at TP 1 (32 query heads, 8 K/V heads, d 128, bf16), A = 16, 8K tokens per rank: each K/V
    head is sent twice, so 8 more heads x 8192 tokens x 128 x 2 bytes = 16 MiB per K and per V, of which
    15/16 leave the rank: 30 MiB."""
    note = kv_repeat_note(32, 8, 16, 8192, 128, 2)
    assert "each K/V head is repeated 2x" in note and "sending 30.00 MiB more per rank, layer" in note
    assert kv_repeat_note(32, 8, 8, 8192, 128, 2) == ""  # 8 divides the K/V heads: nothing repeated


def _doc_ids() -> torch.Tensor:
    lengths = [1, 700, 40, 90, 13, 5, 300, 2, 60, 400, 7, 30, 200, 120, 70, 10]
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[None, :2048]


def test_balanced_layout_over_the_rings_groups():
    """a2a+p2p 2 x 4: the balanced layout of 4 groups, each group's tokens cut in 2 consecutive pieces."""
    doc_ids = _doc_ids()
    index = batch_cp_index(doc_ids, 8, "balanced", "anchor", a2a_size=2)  # [1, 8, 256]
    groups = batch_cp_index(doc_ids, 4, "balanced", "anchor")  # [1, 4, 512]
    assert torch.equal(index.view(1, 4, 512), groups)
    assert torch.equal(index.flatten().sort().values, torch.arange(2048))
    work = rank_work(doc_ids[0], index[0], "anchor", a2a_size=2)
    assert torch.allclose(work[0::2], work[1::2])  # the two ranks of a group share its work
    assert work.max() / work.mean() < 1.02  # balanced over the groups
    pure = batch_cp_index(doc_ids, 8, "balanced", "anchor", a2a_size=8)  # a2a: one group, the sample
    assert torch.equal(pure.flatten(), torch.arange(2048))
    assert torch.equal(batch_cp_index(doc_ids, 8, "megatron", "anchor", 2), megatron_cp_index(2048, 8, 1))


def test_rank_work_is_the_keys_its_queries_see():
    doc_ids = _doc_ids()[0]
    index = megatron_cp_index(2048, 4)
    per_query = visible_keys_per_query(doc_ids, "intra_doc")
    expected = torch.stack([per_query[index[r]].sum() for r in range(4)]).double()
    assert torch.equal(rank_work(doc_ids, index, "intra_doc"), expected)
    shared = rank_work(doc_ids, index, "intra_doc", a2a_size=4)
    assert torch.allclose(shared, expected.sum().expand(4) / 4)
