"""The CPU kernel: aten's CPU flash attention under the varlen contract of ``backends.py``.

A call's sequences are arranged once per plan (cached on the call, reused by every layer): a sequence runs
alone, and runs of tiny sequences (under ``TINY`` rows, where the per-call overhead dominates) share one
call with a block-diagonal mask. (Batching medium sequences of equal padded length into one call was
measured and gains nothing: the kernel's efficiency on short causal sequences, about 50% at 512 rows and
70% at 1K of what it reaches at 8K, comes from its block sizes, not from the number of calls.)
"""

from __future__ import annotations

import torch

from megatron_anchor.attention.heads import expand_kv_heads, reduce_kv_heads
from megatron_anchor.attention.plan import KernelCall

TINY = 64  # shorter sequences run in groups (per-call overhead dominates)


def _group(seqs: list[tuple[int, int, int, int]], causal: bool) -> tuple:
    """One masked call over consecutive sequences (a single one keeps its own kind, no mask)."""
    if len(seqs) == 1:
        return (*seqs[0], None)
    q0, k0 = seqs[0][0], seqs[0][2]
    mask = torch.zeros(seqs[-1][1] - q0, seqs[-1][3] - k0, dtype=torch.bool)
    for a, b, c, e in seqs:
        block = torch.ones(b - a, e - c, dtype=torch.bool)
        mask[a - q0 : b - q0, c - k0 : e - k0] = block.tril(e - c - (b - a)) if causal else block
    return q0, seqs[-1][1], k0, seqs[-1][3], mask


def _groups(call: KernelCall) -> list[tuple]:
    """``(q0, q1, k0, k1, mask or None)`` per CPU kernel call: one per sequence, tiny runs grouped.

    ``mask`` is None for a single sequence (causal or full as the call says), else a block-diagonal bool
    ``[q1 - q0, k1 - k0]``. Cached on the call: every layer reuses it.
    """
    if "cpu" in call.cache:
        return call.cache["cpu"]
    cu_q, cu_k = call.host_cu_q.tolist(), call.host_cu_k.tolist()
    groups, pending = [], []
    for i in range(call.sequences):
        seq = (cu_q[i], cu_q[i + 1], cu_k[i], cu_k[i + 1])
        if seq[1] - seq[0] >= TINY and seq[3] - seq[2] >= TINY:
            groups += [_group(pending, call.causal)] if pending else []
            groups.append((*seq, None))
            pending = []
            continue
        pending.append(seq)
        if pending[-1][1] - pending[0][0] >= TINY:
            groups.append(_group(pending, call.causal))
            pending = []
    groups += [_group(pending, call.causal)] if pending else []
    call.cache["cpu"] = groups
    return groups


def _heads_first(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(0, 1)[None]  # [n, h, d] -> [1, h, n, d] (a view)


def _mask_args(call: KernelCall, group: tuple, like: torch.Tensor) -> tuple[bool, torch.Tensor | None]:
    """(is_causal, additive mask) of one group; causal with m != n needs the explicit mask."""
    q0, q1, k0, k1, mask = group
    if mask is None and call.causal and q1 - q0 != k1 - k0:
        mask = torch.ones(q1 - q0, k1 - k0, dtype=torch.bool).tril(k1 - k0 - (q1 - q0))
    if mask is None:
        return call.causal, None
    return False, torch.zeros(mask.shape, dtype=like.dtype).masked_fill(~mask, float("-inf"))


class SdpaCpu:
    """aten's CPU flash-attention kernels per sequence (or group of tiny sequences)."""

    name = "sdpa_cpu"

    @staticmethod
    def available() -> bool:
        """Whether this torch has the CPU flash ops with a backward."""
        return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")

    def forward(self, q, k, v, call: KernelCall, scale: float):
        """``(out [Tq, h, d] like q, lse [h, Tq] fp32, None)``."""
        heads = q.shape[1]
        k, v = expand_kv_heads(k, heads), expand_kv_heads(v, heads)
        out = torch.empty_like(q)
        lse = torch.empty(heads, q.shape[0], dtype=torch.float32)
        for group in _groups(call):
            q0, q1, k0, k1, _ = group
            causal, mask = _mask_args(call, group, q)
            part_out, part_lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
                *(_heads_first(t) for t in (q[q0:q1], k[k0:k1], v[k0:k1])), 0.0, causal, attn_mask=mask,
                scale=scale,
            )  # fmt: skip
            out[q0:q1] = part_out[0].transpose(0, 1)
            lse[:, q0:q1] = part_lse[0]
        return out, lse, None

    def backward(self, dout, q, k, v, out, lse, call: KernelCall, scale: float, aux=None):
        """``(dq, dk, dv)`` like q, k, v."""
        heads, heads_kv = q.shape[1], k.shape[1]
        k, v = expand_kv_heads(k, heads), expand_kv_heads(v, heads)
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        for group in _groups(call):
            q0, q1, k0, k1, _ = group
            causal, mask = _mask_args(call, group, q)
            grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
                *(_heads_first(t) for t in (dout[q0:q1], q[q0:q1], k[k0:k1], v[k0:k1], out[q0:q1])),
                lse[:, q0:q1][None].contiguous(), 0.0, causal, attn_mask=mask, scale=scale,
            )  # fmt: skip
            dq[q0:q1] += grads[0][0].transpose(0, 1)
            dk[k0:k1] += grads[1][0].transpose(0, 1)
            dv[k0:k1] += grads[2][0].transpose(0, 1)
        return dq, reduce_kv_heads(dk, heads_kv), reduce_kv_heads(dv, heads_kv)
