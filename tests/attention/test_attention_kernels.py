"""Varlen kernels against a per-sequence fp64 reference; the merge, selection and GPU op contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_anchor.attention import anchor_cp_attention, dense_reference_attention
from megatron_anchor.attention.backends import SdpaCpu, TorchTiled, VarlenReference, select_backend
from megatron_anchor.attention.cpu_kernels import NATIVE_FROM, TILE, TINY, pieces_of
from megatron_anchor.attention.flash import AtenFlash, aten_flash_supported, gpu_backend_status
from megatron_anchor.attention.merge import merge_rows
from tests.varlen_fp64 import call_of, reference

# (queries, keys) per sequence: tiny ones (grouped on the CPU), ones past the 512 block, keys > queries.
LENGTHS = [(3, 3), (1, 1), (40, 40), (700, 700), (5, 9), (130, 600), (2, 2), (64, 64)]
# A causal call of square sequences, as ring step 0 makes (tiny runs grouped between longer ones).
# On the CPU 300 is tiled with a remainder block, 1000 and 2053 halved, 1000's halves tiled exactly.
SQUARE = [(n, n) for n in (3, 100, 2, 70, 192, 1000, 5, 120, 2053, TINY - 1, 65, 300)]
BACKENDS = [VarlenReference(), SdpaCpu(), TorchTiled()]


def _inputs(lengths, heads=4, heads_kv=2, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n_q, n_k = sum(a for a, _ in lengths), sum(b for _, b in lengths)
    q = torch.randn(n_q, heads, 16, generator=gen).to(dtype)
    k, v = (torch.randn(n_k, heads_kv, 16, generator=gen).to(dtype) for _ in range(2))
    return q, k, v


CALLS = [(True, LENGTHS), (False, LENGTHS), (True, SQUARE)]


@pytest.mark.parametrize("causal,lengths", CALLS, ids=["causal", "full", "square"])
@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_varlen_forward_and_backward_match_fp64(backend, causal, lengths):
    q, k, v = _inputs(lengths)
    call = call_of(lengths, causal)
    out, lse, aux = backend.forward(q, k, v, call, 0.25)
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference(*ref_in, lengths, causal, 0.25)
    assert out.dtype == q.dtype and lse.dtype == torch.float32 and lse.shape == (4, q.shape[0])
    assert (out.double() - ref_out).abs().max() < 1e-5 and (lse.double() - ref_lse).abs().max() < 1e-5
    dout = torch.randn_like(q)
    ref_out.backward(dout.double())
    grads = backend.backward(dout, q, k, v, out, lse, call, 0.25, aux)
    for got, x in zip(grads, ref_in):
        assert got.shape == x.shape
        assert (got.double() - x.grad).abs().max() / x.grad.abs().max() < 1e-5


# Causal sequences with fewer keys than queries: rows 0 .. n - m - 1 see no key (bottom-right alignment); on
# the CPU grouped (tiny), masked alone (300 x 200), one whose first 512-row tile has no key block at all, and
# sequences without keys (grouped, and alone).
BLIND = [(5, 3), (3, 1), (64, 64), (300, 200), (600, 10), (3, 0), (70, 0)]


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_rows_that_see_no_key_give_out_0_lse_minus_inf_and_zero_gradients(backend):
    """The contract of every kernel, the merge's premise: such rows are 0 / -inf (not NaN, not lse 0), and
    the backward, given that -inf, stays finite; the other rows match fp64 over their own keys."""
    q, k, v = _inputs(BLIND, seed=2)
    call = call_of(BLIND, causal=True)
    out, lse, aux = backend.forward(q, k, v, call, 0.25)
    blind = torch.cat([torch.arange(n) < n - m for n, m in BLIND])
    ref_in = [t.double().requires_grad_() for t in (q[~blind], k, v)]
    ref_out, ref_lse = reference(*ref_in, [(min(n, m), m) for n, m in BLIND], True, 0.25)
    assert torch.isneginf(lse[:, blind]).all() and (out[blind] == 0).all()
    assert (out[~blind].double() - ref_out).abs().max() < 1e-5
    assert (lse[:, ~blind].double() - ref_lse).abs().max() < 1e-5
    dout = torch.randn_like(q)
    ref_out.backward(dout[~blind].double())
    dq, dk, dv = backend.backward(dout, q, k, v, out, lse, call, 0.25, aux)
    assert all(g.isfinite().all() for g in (dq, dk, dv)) and (dq[blind] == 0).all()
    for got, x in zip((dq[~blind], dk, dv), ref_in):
        assert (got.double() - x.grad).abs().max() / x.grad.abs().max() < 1e-5


def test_no_cpu_piece_is_a_call_without_keys_or_queries():
    """aten's CPU kernel dies of a floating-point exception (SIGFPE: no traceback, the process ends) on a
    sequence without keys: its rows are left to ``rows_without_keys``; one without queries is skipped."""
    for causal in (True, False):
        for lengths in ([(70, 70), (70, 0), (70, 70), (3, 0)], [(70, 70), (0, 70)]):  # each alone
            for piece in pieces_of(call_of(lengths, causal)):
                assert piece.q1 > piece.q0 and piece.k1 > piece.k0, piece


def test_cpu_pieces_cover_every_visible_pair_once():
    """The CPU kernel's pieces (grouped, tiled, halved, alone) attend each visible pair exactly once."""
    lengths = [*SQUARE, (NATIVE_FROM - 1, NATIVE_FROM - 1), (NATIVE_FROM, NATIVE_FROM)]
    pieces = pieces_of(call_of(lengths, causal=True))
    start = 0
    for n, _ in lengths:
        covered = torch.zeros(n, n, dtype=torch.int8)
        for p in pieces:
            if p.q0 >= start + n or p.q1 <= start:
                continue
            block = torch.ones(p.q1 - p.q0, p.k1 - p.k0, dtype=torch.int8)
            if p.mask is not None:
                block = p.mask[: start + n - p.q0, : start + n - p.k0].to(torch.int8)
            elif p.blocks > 1:
                block = torch.block_diag(*[torch.ones(TILE, TILE, dtype=torch.int8).tril()] * p.blocks)
            elif p.causal:
                block = block.tril()
            q0, k0 = max(p.q0, start), max(p.k0, start)
            block = block[q0 - p.q0 :, k0 - p.k0 :]
            rows, cols = q0 - start, k0 - start
            covered[rows : rows + block.shape[0], cols : cols + block.shape[1]] += block
        assert torch.equal(covered, torch.ones(n, n, dtype=torch.int8).tril()), n
        start += n
    assert any(p.blocks > 1 for p in pieces) and any(p.merge and p.q1 - p.q0 > TILE for p in pieces)
    assert [p.merge for p in pieces] == sorted(p.merge for p in pieces)  # partial results after the first


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_tiled_cpu_causal_matches_fp64(dtype, tol):
    """Tiled and halved causal sequences, merged in fp32 however the inputs are stored, against fp64."""
    lengths = [(300, 300), (1500, 1500), (2 * TILE, 2 * TILE)]
    q, k, v = _inputs(lengths, dtype=dtype, seed=3)
    call = call_of(lengths, causal=True)
    out, lse, aux = SdpaCpu().forward(q, k, v, call, 0.25)
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference(*ref_in, lengths, True, 0.25)
    assert (out.double() - ref_out).abs().max() < tol and (lse.double() - ref_lse).abs().max() < tol
    dout = torch.randn_like(q)
    ref_out.backward(dout.double())
    for got, x in zip(SdpaCpu().backward(dout, q, k, v, out, lse, call, 0.25, aux), ref_in):
        assert (got.double() - x.grad).abs().max() / x.grad.abs().max() < tol


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_calls_merged_then_backward_with_the_merged_lse_give_the_whole_gradient(backend):
    """Keys of every sequence split over two calls: merged forward and per-call backward are exact."""
    lengths = [(40, 300), (700, 800), (3, 5)]
    q, k, v = _inputs(lengths, seed=1)
    splits = [[(n, m // 3) for n, m in lengths], [(n, m - m // 3) for n, m in lengths]]
    key_rows = [[], []]
    offset = 0
    for _, m in lengths:
        key_rows[0].append(torch.arange(offset, offset + m // 3))
        key_rows[1].append(torch.arange(offset + m // 3, offset + m))
        offset += m
    key_rows = [torch.cat(r) for r in key_rows]
    out = torch.zeros(q.shape)
    lse = torch.full((q.shape[1], q.shape[0]), float("-inf"))
    calls = [call_of(split, False) for split in splits]
    for call, rows in zip(calls, key_rows):
        part_out, part_lse, _ = backend.forward(q, k[rows], v[rows], call, 0.3)
        merge_rows(out, lse, slice(0, q.shape[0]), part_out, part_lse)
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference(*ref_in, lengths, False, 0.3)
    assert (out.double() - ref_out).abs().max() < 1e-5 and (lse.double() - ref_lse).abs().max() < 1e-5
    dout = torch.randn_like(q)
    ref_out.backward(dout.double())
    dq, dk, dv = torch.zeros(q.shape, dtype=torch.float64), torch.zeros(k.shape, dtype=torch.float64), None
    dv = torch.zeros_like(dk)
    for call, rows in zip(calls, key_rows):
        g = backend.backward(dout, q, k[rows], v[rows], out, lse, call, 0.3, None)
        dq += g[0].double()
        dk[rows] += g[1].double()
        dv[rows] += g[2].double()
    for got, x in zip((dq, dk, dv), ref_in):
        assert (got - x.grad).abs().max() / x.grad.abs().max() < 1e-5


def test_merge_rows_is_branch_free_on_unseen_rows_and_gathers():
    out, lse = torch.zeros(6, 2, 3), torch.full((2, 6), float("-inf"))
    part = torch.randn(3, 2, 3)
    part_lse = torch.randn(2, 3)
    rows = torch.tensor([4, 0, 2])
    merge_rows(out, lse, rows, part, part_lse)  # rows not seen yet take the part exactly
    assert torch.equal(out[rows], part) and torch.equal(lse[:, rows], part_lse)
    assert torch.isneginf(lse[:, [1, 3, 5]]).all() and not out[[1, 3, 5]].any()
    merge_rows(out, lse, rows, part, part_lse)  # the same part twice: same output, lse + log 2
    torch.testing.assert_close(out[rows], part)
    torch.testing.assert_close(lse[:, rows], part_lse + np.log(2.0))


def test_backend_selection_and_errors():
    cpu = torch.device("cpu")
    assert select_backend("auto", cpu, torch.float32).name == "sdpa_cpu"
    assert select_backend("varlen_reference", cpu, torch.bfloat16).name == "varlen_reference"
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("flex", cpu, torch.float32)
    for name in ("flash", "flash_attn2", "flash_attn3"):
        with pytest.raises(RuntimeError, match="needs CUDA tensors"):
            select_backend(name, cpu, torch.bfloat16)
    assert gpu_backend_status("flash", torch.device("cuda"), torch.float32) == (
        False,
        "flash kernels take fp16/bf16, not torch.float32",
    )


def test_torch_flash_op_contract_on_meta_tensors():
    """The aten ops the GPU backend calls, as it calls them, on meta tensors: shapes, dtypes, GQA."""
    assert aten_flash_supported() == (True, "")
    q = torch.empty(300, 8, 64, dtype=torch.bfloat16, device="meta")
    k, v = (torch.empty(500, 2, 64, dtype=torch.bfloat16, device="meta") for _ in range(2))
    call = call_of([(100, 200), (200, 300)], False)
    call.cu_q, call.cu_k = call.cu_q.to("meta"), call.cu_k.to("meta")
    out, lse, aux = AtenFlash().forward(q, k, v, call, 0.125)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert lse.shape == (8, 300) and lse.dtype == torch.float32 and len(aux) == 2


def test_prebuilt_plan_and_errors():
    doc_ids = torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2]])
    q = torch.randn(8, 1, 4, 16)
    k = v = torch.randn(8, 1, 2, 16)
    from megatron_anchor.attention import build_attention_plan

    plan = build_attention_plan(doc_ids, "intra_doc")
    out = anchor_cp_attention(q, k, v, plan=plan)
    ref = dense_reference_attention(q, k, v, doc_ids, "intra_doc")
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="does not match the plan"):
        anchor_cp_attention(q[:4], k[:4], v[:4], plan=plan)
    with pytest.raises(ValueError, match="needs doc_ids"):
        anchor_cp_attention(q, k, v)


def _bad_inputs(seq_len=8, heads=4, heads_kv=2, dtype=torch.float32):
    q = torch.randn(seq_len, 1, heads, 16, dtype=dtype)
    k, v = (torch.randn(seq_len, 1, heads_kv, 16, dtype=dtype) for _ in range(2))
    return q, k, v, torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2]])


@pytest.mark.parametrize(
    "change,message",
    [
        (
            lambda q, k, v, d: (q, k[:, :, :1].expand(-1, -1, 3, -1), v[:, :, :1].expand(-1, -1, 3, -1), d),
            "GQA",
        ),
        (lambda q, k, v, d: (q, k.double(), v.double(), d), "one floating dtype"),
        (lambda q, k, v, d: (q[:4], k[:4], v[:4], d), "does not match the plan"),
        (lambda q, k, v, d: (q, k, v[:, :, :, :8], d), "expected q"),
        (lambda q, k, v, d: (q, k, v, d.int()), "int64"),
        (lambda q, k, v, d: (q, k, v, d + 1), "token 0 is the anchor"),
        (lambda q, k, v, d: (q, k, v, torch.tensor([[0, 1, 2, 1, 2, 2, 2, 2]])), "non-decreasing"),
    ],
)
def test_bad_inputs_raise(change, message):
    with pytest.raises(ValueError, match=message):
        anchor_cp_attention(*change(*_bad_inputs()))


def test_bad_layouts_raise():
    q, k, v, doc_ids = _bad_inputs()
    with pytest.raises(ValueError, match="cp_index must be int64"):
        anchor_cp_attention(q, k, v, doc_ids, cp_index=torch.arange(8).view(1, 2, 4))
    with pytest.raises(ValueError, match="exactly once"):
        anchor_cp_attention(q, k, v, doc_ids, cp_index=torch.zeros(1, 1, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown attention mode"):
        anchor_cp_attention(q, k, v, doc_ids, mode="sliding")


def test_single_rank_any_order_matches_dense():
    """One rank whose local order is a permutation of the sample: the output comes back in that order."""
    q, k, v, doc_ids = _bad_inputs()
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    for mode in ("causal", "intra_doc", "anchor"):
        out = anchor_cp_attention(q[perm], k[perm], v[perm], doc_ids, mode=mode, cp_index=perm.view(1, 1, 8))
        ref = dense_reference_attention(q, k, v, doc_ids, mode)[perm]
        assert (out.double() - ref).abs().max() / ref.abs().max() < 1e-5
