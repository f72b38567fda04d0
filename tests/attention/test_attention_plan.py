"""The plan's index arithmetic for any layout, checked against the dense mask without a process group."""

from __future__ import annotations

import pytest
import torch
from cp_harness import layout

from megatron_anchor.attention import build_attention_plan, visibility_mask
from megatron_anchor.attention.geometry import SampleGeometry
from megatron_anchor.parallel import visible_keys_per_query
from megatron_anchor.parallel.cp_layout import megatron_cp_index

SEQ_LEN = 64
NAMES = ["tiny", "lognormal", "one_doc", "sparse", "edges", "off_edges"]


def _doc_ids() -> torch.Tensor:
    return torch.stack([layout(n, SEQ_LEN, i) for i, n in enumerate(NAMES)])


def _index(kind: str, batch: int, cp: int, seed: int) -> torch.Tensor:
    if kind == "megatron":
        return megatron_cp_index(SEQ_LEN, cp, batch)
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(SEQ_LEN, generator=gen).view(cp, -1) for _ in range(batch)])


def _coverage(doc_ids: torch.Tensor, index: torch.Tensor, mode: str):
    """How often each (query, key) pair and each anchor row is covered by the plans of all ranks."""
    batch, cp, local = index.shape
    cover = torch.zeros(batch, SEQ_LEN, SEQ_LEN, dtype=torch.long)
    anchor = torch.zeros(batch, SEQ_LEN, dtype=torch.long)
    plans = [build_attention_plan(doc_ids, mode, cp_size=cp, rank=r, cp_index=index) for r in range(cp)]
    glob = index.sort(dim=2).values.transpose(0, 1).reshape(cp, -1)  # [cp, b * L] packed row -> token
    sample = torch.arange(batch).repeat_interleave(local)  # packed row -> sample
    for rank, plan in enumerate(plans):
        for number, step in enumerate(plan.steps):
            sent = plans[step.src].steps[number].send_rows if number else torch.arange(batch * local)
            assert plans[step.src].steps[number].dst == rank and len(sent if sent is not None else []) == (
                step.recv_rows if number else batch * local
            )
            keys = glob[step.src][sent] if sent is not None else None
            for call in step.calls:
                rows = torch.arange(batch * local)[call.q_rows]
                cols = torch.arange(len(keys))[call.k_rows]
                for i in range(call.sequences):
                    q0, q1, k0, k1 = (*call.host_cu_q[i : i + 2], *call.host_cu_k[i : i + 2])
                    block = torch.ones(q1 - q0, k1 - k0, dtype=torch.long)
                    block = block.tril(k1 - k0 - (q1 - q0)) if call.causal else block
                    b = sample[rows[q0]]
                    assert (sample[rows[q0:q1]] == b).all()
                    cover[b][glob[rank][rows[q0:q1]][:, None], keys[cols[k0:k1]][None, :]] += block
        if plan.anchor is not None:
            for row in torch.nonzero(plan.anchor.rows).flatten():
                anchor[sample[row], glob[rank][row]] += 1
    return cover, anchor, plans


@pytest.mark.parametrize("kind", ["megatron", "random"])
@pytest.mark.parametrize("cp", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", ["causal", "intra_doc", "anchor"])
def test_calls_cover_the_mask_exactly_once(mode, cp, kind):
    doc_ids = _doc_ids()
    index = _index(kind, len(NAMES), cp, seed=cp)
    cover, anchor, plans = _coverage(doc_ids, index, mode)
    mask = visibility_mask(doc_ids, mode)
    if mode == "anchor":
        outside = doc_ids > 0
        assert torch.equal(anchor, outside.long())
        mask[:, :, 0] &= ~outside
    assert torch.equal(cover, mask.long())
    # The plans' own counts add up to the mask: no pair is computed that the mask drops.
    assert sum(p.stats.visible + p.stats.anchor_rows for p in plans) == int(
        visible_keys_per_query(doc_ids, mode).sum()
    )
    if kind == "megatron":  # head-tail chunks: at most one kernel call per ring step
        assert all(len(step.calls) <= 1 for p in plans for step in p.steps)


@pytest.mark.parametrize("mode", ["causal", "intra_doc", "anchor"])
def test_layout_summaries_agree_with_the_plans(mode):
    doc_ids = _doc_ids()
    for cp in (2, 4, 8):
        for kind in ("megatron", "random"):
            index = _index(kind, len(NAMES), cp, seed=cp + 7)
            for b in range(len(NAMES)):
                geom = SampleGeometry(doc_ids[b].numpy(), index[b].numpy(), mode)
                rows, calls = geom.received_rows(), geom.full_calls()
                one = {"cp_size": cp, "cp_index": index[b : b + 1]}
                for rank in range(cp):
                    plan = build_attention_plan(doc_ids[b : b + 1], mode, rank=rank, **one)
                    steps = plan.steps[1:]
                    assert sum(step.recv_rows for step in steps) == rows[rank]
                    assert [len(s.calls) for s in steps] == [calls[rank, s.src] for s in steps]


def test_visible_keys_per_query_equals_the_mask_row_sums():
    doc_ids = _doc_ids()
    for mode in ("causal", "intra_doc", "anchor"):
        assert torch.equal(visible_keys_per_query(doc_ids, mode), visibility_mask(doc_ids, mode).sum(-1))


def test_realistic_documents_need_at_most_two_calls_per_ring_step():
    """S = 64K, cp = 8, log-normal documents (median 1K) and one of S/2, megatron-core's layout."""
    gen = torch.Generator().manual_seed(0)
    seq_len = 65536
    lengths = (torch.randn(200, generator=gen) * 0.7).exp().mul(1024).long().clamp_min(1).tolist()
    lengths.insert(17, seq_len // 2)
    ids = torch.repeat_interleave(torch.arange(1, len(lengths) + 1), torch.tensor(lengths))[: seq_len - 1]
    doc_ids = torch.cat([torch.zeros(1, dtype=torch.long), ids])[None]
    for rank in range(8):
        plan = build_attention_plan(doc_ids, "anchor", cp_size=8, rank=rank)
        assert max(len(step.calls) for step in plan.steps) <= 1
        assert plan.stats.calls <= 8
