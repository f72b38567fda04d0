"""Relative-position invariance of q.k logits under shifted positions (SPEC section 4, at logit level).

In exact arithmetic the logits of RoPE-rotated q and k depend only on ``i - j``: rotating at positions
``delta + i`` must give the same logits as at ``16 + i``. Four RoPE paths are compared:

- ``anchor``: this project's ``apply_rotary_fp32`` (fp64-reduced angles, fp32 rotation, cast back);
- ``megatron_unfused``: megatron-core's unfused bshd apply with its fp32 ``freqs`` table; it casts cos/sin
  to the input dtype (bf16 for bf16 inputs), the loss the AnchorAttention paper measures;
- ``fp32_angles``: fp32 angles ``pos * inv_freq``, then cos/sin and the rotation in fp32 (what an fp32
  ``freqs`` table gives Transformer Engine's fused kernel);
- ``fp64``: everything fp64, no cast back (the floor).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from megatron_anchor.rope.apply import apply_rotary_fp32, rotate_fp32
from megatron_anchor.rope.frequencies import default_inv_freq

PATHS = ("anchor", "megatron_unfused", "fp32_angles", "fp64")
REFERENCE_DELTA = 16


def _fp32_inv_freq(base: float, dim: int) -> torch.Tensor:
    """inv_freq as megatron-core and TE build it: fp32 throughout."""
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))


def _anchor(t: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    return apply_rotary_fp32(t, positions, default_inv_freq(base, t.shape[-1]), backend="torch")


def megatron_unfused_rope(
    t: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    mscale: float = 1.0,
    interleaved: bool = False,
) -> torch.Tensor:
    """megatron-core's unfused RoPE on ``t [s, b, h, d]`` at ``positions [s]`` or ``[b, s]``.

    The freqs table is an fp32 product, as megatron-core's RotaryEmbedding builds it, and its bshd apply
    casts cos/sin to ``t.dtype`` before the multiply (the bf16 loss the AnchorAttention paper measures).
    """
    from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

    freqs = positions.float()[..., None] * inv_freq.float().to(t.device)  # [(b,) s, d_rot/2] fp32
    emb = freqs.repeat_interleave(2, dim=-1) if interleaved else torch.cat([freqs, freqs], dim=-1)
    emb = emb[:, None, None] if positions.dim() == 1 else emb.transpose(0, 1)[:, :, None]  # [s, b|1, 1, d]
    return _apply_rotary_pos_emb_bshd(t, emb, rotary_interleaved=interleaved, mscale=mscale)


def _megatron_unfused(t: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    return megatron_unfused_rope(t, positions, _fp32_inv_freq(base, t.shape[-1]))


def _fp32_angles(t: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    angles = positions.to(torch.float32)[:, None] * _fp32_inv_freq(base, t.shape[-1])  # [s, d/2] fp32
    return rotate_fp32(t, angles)


def _fp64(t: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    angles = positions.to(torch.float64)[:, None] * default_inv_freq(base, t.shape[-1])  # [s, d/2] fp64
    cos, sin = angles.cos()[:, None, None], angles.sin()[:, None, None]
    x1, x2 = t.double().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


ROPE_PATHS: dict[str, Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]] = {
    "anchor": _anchor,
    "megatron_unfused": _megatron_unfused,
    "fp32_angles": _fp32_angles,
    "fp64": _fp64,
}


def causal_logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """fp64 logits ``[b, h, s, s]`` of ``q, k [s, b, h, d]`` scaled by 1/sqrt(d), upper triangle zeroed."""
    logits = torch.einsum("ibhd,jbhd->bhij", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return logits.tril()


def logit_shift_deviation(
    path: str, q: torch.Tensor, k: torch.Tensor, delta: int, base: float = 10000.0
) -> float:
    """Mean ``|logit(delta + i, delta + j) - logit(16 + i, 16 + j)|`` over causal pairs, for one path.

    ``q, k [s, b, h, d]`` in the input dtype under test; logits are taken in fp64 from the rotated tensors
    so that only the RoPE path's error is measured.
    """
    rope = ROPE_PATHS[path]
    index = torch.arange(q.shape[0])
    shifted = causal_logits(rope(q, delta + index, base), rope(k, delta + index, base))
    reference = causal_logits(rope(q, REFERENCE_DELTA + index, base), rope(k, REFERENCE_DELTA + index, base))
    n_pairs = q.shape[0] * (q.shape[0] + 1) // 2 * q.shape[1] * q.shape[2]
    return float((shifted - reference).abs().sum() / n_pairs)


def deviation_table(
    deltas: tuple[int, ...], dtypes: tuple[torch.dtype, ...], seq: int = 256, heads: int = 4,
    head_dim: int = 128, base: float = 10000.0, seed: int = 0,
) -> dict[tuple[str, int], dict[str, float]]:
    """``{(dtype name, delta): {path: deviation}}`` for random ``q, k [seq, 1, heads, d]``."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(seq, 1, heads, head_dim, generator=gen)
    k = torch.randn(seq, 1, heads, head_dim, generator=gen)
    table = {}
    for dtype in dtypes:
        qd, kd = q.to(dtype), k.to(dtype)
        name = str(dtype).removeprefix("torch.")
        for delta in deltas:
            table[(name, delta)] = {p: logit_shift_deviation(p, qd, kd, delta, base) for p in PATHS}
    return table
