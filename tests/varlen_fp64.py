"""The per-sequence fp64 reference of a varlen kernel call, and the call itself, from ``(queries, keys)``
lengths: shared by the kernel tests and the contract routes."""

from __future__ import annotations

import math

import numpy as np
import torch

from megatron_anchor.attention.plan import kernel_call


def call_of(lengths: list[tuple[int, int]], causal: bool):
    """The CPU kernel call of packed sequences of ``(queries, keys)`` lengths."""
    q_len, k_len = (np.array(x, dtype=np.int64) for x in zip(*lengths))
    starts = [np.concatenate([[0], np.cumsum(n)[:-1]]) for n in (q_len, k_len)]
    return kernel_call(causal, (starts[0], q_len), (starts[1], k_len), torch.device("cpu"))


def reference(q, k, v, lengths, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp64 ``(out, lse)`` sequence by sequence (causal: bottom-right aligned); a row that sees no key:
    out 0, lse -inf."""
    outs, lses, a, c = [], [], 0, 0
    group = q.shape[1] // k.shape[1]
    for n, m in lengths:
        qs = q[a : a + n].double().transpose(0, 1)  # [h, n, d]
        ks, vs = (t[c : c + m].double().repeat_interleave(group, 1).transpose(0, 1) for t in (k, v))
        s = qs @ ks.transpose(-1, -2) * scale
        if causal:
            s = s.masked_fill(~torch.ones(n, m, dtype=torch.bool).tril(m - n), -math.inf)
        outs.append((torch.softmax(s, -1).nan_to_num(0.0) @ vs).transpose(0, 1))
        lses.append(torch.logsumexp(s, -1))
        a, c = a + n, c + m
    return torch.cat(outs), torch.cat(lses, dim=1)
