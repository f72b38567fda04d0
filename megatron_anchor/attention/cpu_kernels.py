"""The CPU kernel: aten's CPU flash attention under the varlen contract of ``backends.py``.

A call's sequences are arranged once per plan into kernel pieces (cached on the call, reused by every
layer):
- a sequence runs alone, and runs of tiny sequences (under ``TINY`` rows, where the per-call overhead
  dominates) share one call with a block-diagonal mask;
- a causal sequence of ``2 * TILE`` to ``HALVED_FROM`` rows is cut into ``TILE``-row blocks: one batched
  causal call over the diagonal blocks, then one full call per block row over the keys before it;
- one of ``HALVED_FROM`` to ``NATIVE_FROM`` rows is halved, each half again, plus one full call of the
  second half over the first; longer ones run as they are.
aten's causal kernel computes every key of a query block up to the end of its 512-key block on the
diagonal: below 768 rows a causal call costs the whole square (about 50% of its efficiency at 8K), 70% at
1K, 81% at 1.5K; full calls reach 90-108% from 128 rows. The pieces, merged by log-sum-exp in fp32, run
1.4x faster forward+backward at 400-512 rows and 1.1x at 0.8-2.3K (measured on one thread).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from megatron_anchor.attention.heads import expand_kv_heads, reduce_kv_heads
from megatron_anchor.attention.merge import finite_lse, merge_rows
from megatron_anchor.attention.plan import KernelCall

TINY = 64  # shorter sequences run in groups (per-call overhead dominates)
TILE = 128  # block rows of a tiled causal sequence
HALVED_FROM = 512  # causal squares from 2 * TILE are tiled, from here halved (each half again)
NATIVE_FROM = 4096  # and from here left to aten's own blocks


class Piece(NamedTuple):
    """One aten call: query rows ``[q0, q1)`` over key rows ``[k0, k1)``.

    ``blocks > 1``: the rows are that many equal blocks, each causal over its own keys (one batched call).
    ``mask``: a bool ``[q1 - q0, k1 - k0]`` passed as the additive mask instead of the causal flag
    (block-diagonal over grouped tiny sequences, or one causal sequence with more keys than queries).
    ``merge``: the rows already hold a partial result to fold this one into.
    """

    q0: int
    q1: int
    k0: int
    k1: int
    causal: bool
    mask: torch.Tensor | None = None
    blocks: int = 1
    merge: bool = False


def _bottom_right_causal(rows: int, keys: int) -> torch.Tensor:
    """Bool ``[rows, keys]``: query i sees keys up to ``keys - rows + i`` (causal aligned to the end)."""
    return torch.ones(rows, keys, dtype=torch.bool).tril(keys - rows)


def _group(seqs: list[tuple[int, int, int, int]], causal: bool) -> list[Piece]:
    """One masked call over consecutive sequences (a single one runs as it is)."""
    if len(seqs) == 1:
        return _single(seqs[0], causal)
    q0, k0 = seqs[0][0], seqs[0][2]
    mask = torch.zeros(seqs[-1][1] - q0, seqs[-1][3] - k0, dtype=torch.bool)
    for a, b, c, e in seqs:
        block = _bottom_right_causal(b - a, e - c) if causal else torch.ones(b - a, e - c, dtype=torch.bool)
        mask[a - q0 : b - q0, c - k0 : e - k0] = block
    return [Piece(q0, seqs[-1][1], k0, seqs[-1][3], False, mask)]


def _tiled(q0: int, k0: int, n: int) -> list[Piece]:
    """A causal square of ``n`` rows as diagonal blocks (batched, then the remainder) and block rows."""
    whole = n // TILE * TILE
    pieces = [Piece(q0, q0 + whole, k0, k0 + whole, True, blocks=whole // TILE)]
    if whole < n:
        pieces.append(Piece(q0 + whole, q0 + n, k0 + whole, k0 + n, True))
    for start in range(TILE, n, TILE):
        pieces.append(Piece(q0 + start, q0 + min(n, start + TILE), k0, k0 + start, False, merge=True))
    return pieces


def causal_square(q0: int, k0: int, n: int) -> list[Piece]:
    """A causal square of ``n`` rows: native, tiled, or halved (two causal halves and the full square)."""
    if n < 2 * TILE or n >= NATIVE_FROM:
        return [Piece(q0, q0 + n, k0, k0 + n, True)]
    if n < HALVED_FROM:
        return _tiled(q0, k0, n)
    half = n // 2
    return [
        *causal_square(q0, k0, half),
        *causal_square(q0 + half, k0 + half, n - half),
        Piece(q0 + half, q0 + n, k0, k0 + half, False, merge=True),
    ]


def _single(seq: tuple[int, int, int, int], causal: bool) -> list[Piece]:
    """The pieces of one sequence run alone."""
    q0, q1, k0, k1 = seq
    if causal and q1 - q0 == k1 - k0:
        return causal_square(q0, k0, q1 - q0)
    if causal:  # aten's causal flag aligns to the top-left: other shapes take the mask
        return [Piece(*seq, False, _bottom_right_causal(q1 - q0, k1 - k0))]
    return [Piece(*seq, False)]


def pieces_of(call: KernelCall) -> list[Piece]:
    """The aten calls of ``call``, partial results to merge after each row's first; cached on the call."""
    if "cpu" in call.cache:
        return call.cache["cpu"]
    cu_q, cu_k = call.host_cu_q.tolist(), call.host_cu_k.tolist()
    pieces, pending = [], []
    for i in range(call.sequences):
        seq = (cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1])
        if seq[0] == seq[1] or seq[2] == seq[3]:  # aten dies of SIGFPE on no keys; rows_without_keys has them
            continue
        if seq[1] - seq[0] >= TINY and seq[3] - seq[2] >= TINY:
            pieces += _group(pending, call.causal) if pending else []
            pieces += _single(seq, call.causal)
            pending = []
            continue
        pending.append(seq)
        if pending[-1][1] - pending[0][0] >= TINY:
            pieces += _group(pending, call.causal)
            pending = []
    pieces += _group(pending, call.causal) if pending else []
    call.cache["cpu"] = sorted(pieces, key=lambda p: p.merge)
    return call.cache["cpu"]


def _rows(t: torch.Tensor, piece: Piece, keys: bool = False) -> torch.Tensor:
    """``[n, h, d]`` rows of the piece as aten's ``[blocks, h, n / blocks, d]`` (a view)."""
    a, b = (piece.k0, piece.k1) if keys else (piece.q0, piece.q1)
    return t[a:b].unflatten(0, (piece.blocks, -1)).transpose(1, 2)


def _flat(t: torch.Tensor) -> torch.Tensor:
    """aten's ``[blocks, h, m, d]`` back to ``[blocks * m, h, d]``."""
    return t.transpose(1, 2).flatten(0, 1)


def _lse_rows(lse: torch.Tensor, piece: Piece) -> torch.Tensor:
    """``lse [h, T]``'s rows of the piece as aten's ``[blocks, h, m]``."""
    return lse[:, piece.q0 : piece.q1].unflatten(1, (piece.blocks, -1)).transpose(0, 1).contiguous()


def _additive_masks(call: KernelCall, dtype: torch.dtype) -> list[torch.Tensor | None]:
    """Each piece's mask as aten's additive ``dtype`` mask (None: no mask); built once per plan and dtype."""
    key = ("cpu_masks", dtype)
    if key not in call.cache:
        call.cache[key] = [
            None if p.mask is None else torch.zeros(p.mask.shape, dtype=dtype).masked_fill(~p.mask, -math.inf)
            for p in pieces_of(call)
        ]
    return call.cache[key]


def rows_without_keys(call: KernelCall) -> torch.Tensor | None:
    """Bool ``[Tq]``: the query rows that see no key (causal with fewer keys than queries, or no keys); None
    when every row sees one. From the host offsets, once per plan (aten gives such rows lse 0, not -inf)."""
    if "cpu_no_key" not in call.cache:
        q_len, k_len = np.diff(call.host_cu_q), np.diff(call.host_cu_k)
        blind = np.maximum(q_len - k_len, 0) if call.causal else np.where(k_len == 0, q_len, 0)
        position = np.arange(call.host_cu_q[-1]) - np.repeat(call.host_cu_q[:-1], q_len)
        rows = position < np.repeat(blind, q_len)  # bottom-right causal: row i sees keys <= i + m - n
        call.cache["cpu_no_key"] = torch.from_numpy(rows) if rows.any() else None
    return call.cache["cpu_no_key"]


class SdpaCpu:
    """aten's CPU flash-attention kernels per sequence (or group of tiny sequences, or tiles)."""

    name = "sdpa_cpu"

    @staticmethod
    def available() -> bool:
        """Whether this torch has the CPU flash ops with a backward."""
        return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")

    def forward(self, q, k, v, call: KernelCall, scale: float):
        """``(out [Tq, h, d] like q, lse [h, Tq] fp32, None)``; tiles merge in fp32."""
        heads = q.shape[1]
        k, v = expand_kv_heads(k, heads), expand_kv_heads(v, heads)
        out = torch.empty(q.shape, dtype=torch.float32)
        lse = torch.empty(heads, q.shape[0], dtype=torch.float32)
        for piece, mask in zip(pieces_of(call), _additive_masks(call, q.dtype)):
            part_out, part_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                _rows(q, piece), _rows(k, piece, True), _rows(v, piece, True), 0.0, piece.causal,
                attn_mask=mask, scale=scale,
            )  # fmt: skip
            part_out, part_lse = _flat(part_out), part_lse.transpose(0, 1).flatten(1)
            if piece.merge:
                merge_rows(out, lse, slice(piece.q0, piece.q1), part_out, part_lse)
            else:
                out[piece.q0 : piece.q1] = part_out
                lse[:, piece.q0 : piece.q1] = part_lse
        blind = rows_without_keys(call)
        if blind is not None:
            out[blind], lse[:, blind] = 0.0, float("-inf")
        return out.to(q.dtype), lse, None

    def backward(self, dout, q, k, v, out, lse, call: KernelCall, scale: float, aux=None):
        """``(dq, dk, dv)`` like q, k, v: every piece's backward with the final, merged out and lse (the
        pieces' gradients summed in fp32)."""
        heads, heads_kv = q.shape[1], k.shape[1]
        k, v = expand_kv_heads(k, heads), expand_kv_heads(v, heads)
        dq, dk, dv = (torch.zeros(t.shape, dtype=torch.float32) for t in (q, k, v))
        lse = finite_lse(lse)
        for piece, mask in zip(pieces_of(call), _additive_masks(call, q.dtype)):
            grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                *(_rows(t, piece) for t in (dout, q)), _rows(k, piece, True), _rows(v, piece, True),
                _rows(out, piece), _lse_rows(lse, piece), 0.0, piece.causal, attn_mask=mask, scale=scale,
            )  # fmt: skip
            dq[piece.q0 : piece.q1] += _flat(grads[0])
            dk[piece.k0 : piece.k1] += _flat(grads[1])
            dv[piece.k0 : piece.k1] += _flat(grads[2])
        dk, dv = (reduce_kv_heads(g, heads_kv).to(k.dtype) for g in (dk, dv))
        return dq.to(q.dtype), dk, dv
