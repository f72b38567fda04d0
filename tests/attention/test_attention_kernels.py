"""Kernel backends per tile kind against fp64, backend selection, and input errors (single process)."""

from __future__ import annotations

import pytest
import torch

from megatron_anchor.attention import anchor_cp_attention, dense_reference_attention
from megatron_anchor.attention.backends import FlexCuda, SdpaCpu, TorchTiled, merge_partial, select_backend

N, M = 600, 700  # > BLOCK so the torch kernel's sub-blocking and causal diagonal blocks are exercised


def _tile_mask(kind: str) -> torch.Tensor:
    if kind == "full":
        return torch.ones(N, M, dtype=torch.bool)
    if kind == "causal":
        return torch.ones(N, N, dtype=torch.bool).tril()
    ids = torch.arange(N) // 37  # short documents on the diagonal
    return (ids[:, None] == ids[None, :]).tril()


def _dense(q, k, v, mask, scale):
    """fp64 reference of one tile: (out, lse)."""
    s = (q.double() @ k.double().transpose(-1, -2) * scale).masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v.double(), torch.logsumexp(s, -1)


def _tile_inputs(kind: str):
    gen = torch.Generator().manual_seed(0)
    m = N if kind != "full" else M
    q, k, v = (torch.randn(1, 2, n, 16, generator=gen) for n in (N, m, m))
    return q, k, v, _tile_mask(kind)


@pytest.mark.parametrize("kind", ["full", "causal", "masked"])
@pytest.mark.parametrize("backend", [TorchTiled(), SdpaCpu(), FlexCuda(compiled=False)], ids=lambda b: b.name)
def test_tile_forward_and_backward(backend, kind):
    q, k, v, mask = _tile_inputs(kind)
    out, lse = backend.forward(q, k, v, kind, mask if kind == "masked" else None, 0.25)
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = _dense(*ref_in, mask, 0.25)
    assert (out.double() - ref_out).abs().max() < 1e-5 and (lse.double() - ref_lse).abs().max() < 1e-5
    dout = torch.randn_like(q)
    ref_out.backward(dout.double())
    grads = backend.backward(
        dout, q, k, v, out.to(q.dtype), lse, kind, mask if kind == "masked" else None, 0.25
    )
    for got, x in zip(grads, ref_in):
        assert (got.double() - x.grad).abs().max() / x.grad.abs().max() < 1e-5


def test_merge_partial_equals_softmax_over_union():
    q, k, v, _ = _tile_inputs("full")
    full = torch.ones(N, M, dtype=torch.bool)
    ref_out, ref_lse = _dense(q, k, v, full, 0.25)
    out = torch.zeros_like(q)
    lse = torch.full(q.shape[:-1], float("-inf"))
    for j0, j1 in [(0, 100), (100, 650), (650, 700)]:
        merge_partial(out, lse, *_dense(q, k[:, :, j0:j1], v[:, :, j0:j1], full[:, j0:j1], 0.25))
    assert (out - ref_out).abs().max() < 1e-6 and (lse - ref_lse).abs().max() < 1e-6


def test_backend_selection_and_errors():
    assert select_backend("auto", torch.device("cpu")).name == "sdpa_cpu"
    assert select_backend("torch", torch.device("cpu")).name == "torch"
    with pytest.raises(ValueError, match="unknown attention backend"):
        select_backend("flash", torch.device("cpu"))
    with pytest.raises(RuntimeError, match="'flex' needs CUDA"):
        select_backend("flex", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flex", "torch"])
def test_cuda_matches_dense(backend):
    doc_ids = torch.tensor([[0] + [1] * 300 + [2] * 211 + [3] * 500])
    q, k, v = (torch.randn(1012, 1, 4, 64, device="cuda", requires_grad=True) for _ in range(3))
    out = anchor_cp_attention(q, k, v, doc_ids, backend=backend)
    ref = dense_reference_attention(q, k, v, doc_ids)
    assert (out.double() - ref).abs().max() / ref.abs().max() < 1e-4


def _inputs(seq_len=8, heads=4, heads_kv=2, dtype=torch.float32):
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
        (lambda q, k, v, d: (q[:4], k[:4], v[:4], d), "local length"),
        (lambda q, k, v, d: (q, k, v[:, :, :, :8], d), "expected q"),
        (lambda q, k, v, d: (q, k, v, d.int()), "int64"),
        (lambda q, k, v, d: (q, k, v, d + 1), "token 0 is the anchor"),
        (lambda q, k, v, d: (q, k, v, torch.tensor([[0, 1, 2, 1, 2, 2, 2, 2]])), "non-decreasing"),
    ],
)
def test_bad_inputs_raise(change, message):
    with pytest.raises(ValueError, match=message):
        anchor_cp_attention(*change(*_inputs()))


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="unknown attention mode"):
        anchor_cp_attention(*_inputs(), mode="sliding")


def test_single_rank_without_group_matches_dense():
    q, k, v, doc_ids = _inputs()
    for mode in ("causal", "intra_doc", "anchor"):
        out = anchor_cp_attention(q, k, v, doc_ids, mode=mode)
        ref = dense_reference_attention(q, k, v, doc_ids, mode)
        assert (out.double() - ref).abs().max() / ref.abs().max() < 1e-5


def test_communicator_refuses_misuse():
    from megatron_anchor.attention.comm import CPComm, Pending

    comm = CPComm(None)
    assert (comm.size, comm.rank, comm.peers(0)) == (1, 0, (0, 0))
    with pytest.raises(ValueError, match="ring step"):
        comm.exchange(1, torch.zeros(1), (1,), torch.zeros(1))
    pending = Pending([], None, [])
    pending.wait()
    with pytest.raises(RuntimeError, match="twice"):
        pending.wait()
