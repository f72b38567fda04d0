"""Apply RoPE in fp32 with angles computed in fp64 and reduced modulo 2*pi (SPEC section 3)."""

from __future__ import annotations

import math

import torch


def rotary_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """fp32 angles ``[..., d_rot/2]`` = ``(pos * inv_freq) mod 2*pi``, the product taken in fp64."""
    angles = positions.to(torch.float64)[..., None] * inv_freq.to(torch.float64)
    return torch.remainder(angles, 2 * math.pi).to(torch.float32)


def apply_rotary_fp32(
    t: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, mscale: float = 1.0
) -> torch.Tensor:
    """Rotate ``t [s, b, h, d]`` (non-interleaved halves) at ``positions [s]`` or ``[b, s]``; fp32 inside."""
    angles = rotary_angles(positions, inv_freq)  # [s, d/2] or [b, s, d/2], fp32
    if angles.dim() == 3:
        angles = angles.transpose(0, 1)  # [s, b, d/2]
    else:
        angles = angles[:, None]  # [s, 1, d/2]
    angles = torch.cat([angles, angles], dim=-1)[:, :, None]  # [s, b|1, 1, d]
    cos, sin = angles.cos() * mscale, angles.sin() * mscale
    x = t.float()
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos + rotated * sin).type_as(t)
