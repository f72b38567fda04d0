"""Ring attention on real gloo groups (cp = 1, 2, 4, 8) against dense fp64 attention over the whole sample.

Each CP size spawns its processes once; they run every case and rank 0 reports the errors.
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
    errors = results(cp)["cases"][case.name]
    assert max(errors.values()) <= TOLERANCE[case.dtype], errors


def expected_stats(doc_ids: torch.Tensor, cp: int, mode: str) -> dict:
    """The counters derived independently from the dense mask."""
    seq_len = doc_ids.shape[1]
    mask = visibility_mask(doc_ids, mode)  # [b, S, S]
    anchor_rows = 0
    if mode == "anchor":  # the anchor column is folded in separately for rows outside document 0
        outside = doc_ids > 0
        anchor_rows = int(outside.sum())
        mask[:, :, 0] &= ~outside
    n_chunks = 2 * cp if cp > 1 else 1
    chunk = seq_len // n_chunks
    blocks = mask.view(-1, n_chunks, chunk, n_chunks, chunk).any(4).any(2)  # [b, q chunk, k chunk]
    possible = torch.ones(n_chunks, n_chunks, dtype=torch.bool).tril()
    owner = [min(c, n_chunks - 1 - c) for c in range(n_chunks)]  # CP rank of each chunk
    rows_sent = 0
    for kc in range(n_chunks):
        for dst in set(owner) - {owner[kc]}:
            q_rows = torch.cat(
                [torch.arange(c * chunk, (c + 1) * chunk) for c in range(n_chunks) if owner[c] == dst]
            )
            needed = torch.nonzero(mask[:, q_rows, kc * chunk : (kc + 1) * chunk].any(0).any(0)).flatten()
            rows_sent += chunk - int(needed[0]) if len(needed) else 0
    return {
        "pairs_computed": int(blocks.sum()),
        "pairs_skipped": int((~blocks & possible).sum()),
        "visible": int(mask.sum()),
        "anchor_rows": anchor_rows,
        "rows_sent": rows_sent,
        "rows_not_sent": cp * (cp - 1) * 2 * chunk - rows_sent if cp > 1 else 0,
    }


@pytest.mark.parametrize("mode", ["intra_doc", "anchor", "causal"])
@pytest.mark.parametrize("cp", CP_SIZES)
def test_skip_counters_match_dense_mask(cp, mode):
    got = results(cp)["stats"][mode]
    doc_ids = torch.tensor(got["doc_ids"])
    expected = expected_stats(doc_ids, cp, mode)
    assert {name: got["stats"][name] for name in expected} == expected
    assert got["stats"]["computed"] >= got["stats"]["visible"]
    if mode != "causal" and cp >= 4:  # the layout is sparse: most chunk pairs cost nothing
        assert expected["pairs_skipped"] > expected["pairs_computed"]
    if mode != "causal" and cp > 1:
        assert expected["rows_not_sent"] > expected["rows_sent"]


@pytest.mark.parametrize("cp", [2, 4])
def test_errors_in_a_group(cp):
    errors = results(cp)["errors"]
    assert "divisible by 2*context_parallel_size" in errors["indivisible"]
    assert "doc_ids differ across CP ranks" in errors["differ"]
