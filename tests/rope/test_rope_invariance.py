"""Relative-position invariance of q.k logits (SPEC section 4 at logit level) for four RoPE paths."""

from __future__ import annotations

import pytest
import torch

from megatron_anchor.rope.invariance import deviation_table

DELTAS = (4096, 65536, 262144)


@pytest.fixture(scope="module")
def table() -> dict:
    return deviation_table(DELTAS, (torch.float32, torch.bfloat16), seq=128, heads=4, head_dim=128)


@pytest.mark.parametrize("delta", DELTAS)
def test_fp32_inputs_anchor_beats_megatron_and_fp32_angles(table: dict, delta: int) -> None:
    row = table[("float32", delta)]
    assert row["anchor"] < row["megatron_unfused"] and row["anchor"] < row["fp32_angles"]
    assert row["anchor"] < 1e-6 < row["fp32_angles"]  # exact angles: only fp32 rounding is left
    assert row["fp64"] < 1e-10


@pytest.mark.parametrize("delta", DELTAS[1:])
def test_bf16_inputs_anchor_beats_megatron_and_fp32_angles(table: dict, delta: int) -> None:
    row = table[("bfloat16", delta)]
    assert row["anchor"] < row["megatron_unfused"] and row["anchor"] < row["fp32_angles"]


def test_bf16_megatron_unfused_is_worst_and_anchor_does_not_grow(table: dict) -> None:
    rows = [table[("bfloat16", delta)] for delta in DELTAS]
    assert all(row["megatron_unfused"] > 1.4 * row["anchor"] for row in rows)
    anchor = [row["anchor"] for row in rows]
    assert max(anchor) < 1.05 * min(anchor)  # the deviation left is bf16's output rounding, not position
    fp32_angles = [row["fp32_angles"] for row in rows]
    assert fp32_angles[-1] > fp32_angles[0]
