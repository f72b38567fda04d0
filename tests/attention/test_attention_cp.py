"""Ring attention on real gloo groups (cp = 1, 2, 4, 8) against dense fp64 attention over the whole sample.

Each CP size spawns its processes once; they run every case (megatron-core's layout, the balanced one and
random layouts; ``--cp-comm-type`` a2a at cp = 2 and 4, a2a+p2p as 2 x 2 at cp = 4) and rank 0 reports the
errors and the counters, which are checked against the dense mask.
"""

from __future__ import annotations

import functools
import tempfile

import pytest
import torch
from cp_harness import cases_for, run_all

from megatron_anchor.attention import visibility_mask

CP_SIZES = (1, 2, 4, 8)
TOLERANCE = {"float32": 1e-4, "bfloat16": 2e-2}


@functools.cache
def results(cp: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        return run_all(cp, f"{tmp}/results.json")


@pytest.mark.parametrize(
    "cp,case",
    [(cp, case) for cp in CP_SIZES for case in cases_for(cp)],
    ids=lambda x: str(getattr(x, "name", x)),
)
def test_matches_dense_fp64(cp, case):
    got = results(cp)["cases"][case.name]
    assert max(got["errors"].values()) <= TOLERANCE[case.dtype], got["errors"]
    planned, forward, backward = got["kernel_calls"]  # rank 0's kernel launches, as planned
    assert forward == planned == backward


def expected_stats(doc_ids: torch.Tensor, index: torch.Tensor, mode: str) -> dict:
    """The counters derived independently from the dense mask and the layout."""
    batch, cp, _ = index.shape
    mask = visibility_mask(doc_ids, mode)  # [b, S, S]
    anchor_rows = 0
    if mode == "anchor":  # the anchor column is folded in separately for rows outside document 0
        outside = doc_ids > 0
        anchor_rows = int(outside.sum())
        mask[:, :, 0] &= ~outside
    needed = torch.zeros(cp, cp, dtype=torch.long)  # [dst, src] K/V rows dst's queries need of src
    for b in range(batch):
        for dst in range(cp):
            seen = mask[b, index[b, dst]].any(0)  # [S] keys some query of dst sees
            for src in set(range(cp)) - {dst}:
                needed[dst, src] += int(seen[index[b, src]].sum())
    idle = sum(
        int(needed[r, (r - k) % cp] == 0 and needed[(r + k) % cp, r] == 0)
        for r in range(cp)
        for k in range(1, cp)
    )
    return {
        "visible": int(mask.sum()),
        "anchor_rows": anchor_rows,
        "rows_sent": int(needed.sum()),
        "idle_steps": idle,
    }


LAYOUTS = ("megatron", "balanced", "random")
LAYOUT_CASES = [(1, "megatron")] + [(cp, name) for cp in CP_SIZES[1:] for name in LAYOUTS]


@pytest.mark.parametrize("mode", ["intra_doc", "anchor", "causal"])
@pytest.mark.parametrize("cp,cp_layout", LAYOUT_CASES)
def test_counters_match_dense_mask(cp, cp_layout, mode):
    got = results(cp)["stats"][f"{mode}-{cp_layout}"]
    doc_ids, index = torch.tensor(got["doc_ids"]), torch.tensor(got["index"])
    expected = expected_stats(doc_ids, index, mode)
    assert {name: got["stats"][name] for name in expected} == expected
    if cp_layout != "random":  # head-tail cuts: one causal call, then at most one call per ring step
        assert got["stats"]["calls"] <= cp * cp
    if mode != "causal" and cp_layout != "random" and cp > 1:  # documents: far fewer rows than a ring
        assert expected["rows_sent"] < doc_ids.numel() * (cp - 1) // 2


@pytest.mark.parametrize("cp", [2, 4])
def test_errors_in_a_group(cp):
    errors = results(cp)["errors"]
    assert "divisible by 2*context_parallel_size" in errors["indivisible"]
    assert "doc_ids or cp_index differ across CP ranks" in errors["differ"]
    assert "doc_ids or cp_index differ across CP ranks" in errors["differ_layout"]


@pytest.mark.parametrize("cp", [4, 8])
def test_backward_keeps_two_steps_of_dkdv_replies_in_flight_at_most(cp):
    """Each ring step's fp32 dK/dV reply is waited for once the next is posted, not all at the end."""
    assert results(cp)["reply_depth"] == 2


@pytest.mark.parametrize("cp", [2, 4])
def test_an_all_to_all_degree_that_cannot_split_the_heads_is_one_line_naming_both(cp):
    message = results(cp)["comm_errors"]["heads"]
    assert f"the all-to-all degree {cp}" in message and "the 3 query heads" in message
    assert "\n" not in message


@pytest.mark.parametrize("cp", [2, 4])
def test_every_comm_type_reads_nothing_back_with_the_plan_built(cp):
    """The all-to-all and the ring with a prebuilt plan: no value read back to the host in forward or
    backward, on any rank (the hot-path rule of tests/model, inside a real group)."""
    seen = results(cp)["host_reads"]
    assert set(seen) == ({"p2p", "a2a", "a2a+p2p"} if cp == 4 else {"p2p", "a2a"})
    assert all(names == [] for names in seen.values()), seen
