"""What the BF16 RoPE deviation diagnostic sweeps: its numeric paths, the reference shift, the paper's
delta1 values and the sequence lengths T (torch-free: the tool's flags and their defaults come from here)."""

from __future__ import annotations

REFERENCE_DELTA = 16
# name -> (compute dtype, RoPE implementation)
PATHS: dict[str, tuple[str, str]] = {
    "bf16_fp32_rope": ("bfloat16", "anchor_fp32"),
    "bf16_megatron_rope": ("bfloat16", "megatron_unfused"),
    "fp32": ("float32", "anchor_fp32"),
}
FIRST_LENGTH = 64  # the shortest T of the growth (the paper's 64, 128, ..., 8192)


def default_deltas() -> list[int]:
    """The paper's sweep of delta1: 0..22, then 50, 100, ..., 2000."""
    return list(range(23)) + list(range(50, 2001, 50))


def growth_lengths(longest: int) -> list[int]:
    """T = 64, 128, ... doubling up to ``longest`` (which ends the list when it is not a power of two)."""
    lengths = []
    t = FIRST_LENGTH
    while t < longest:
        lengths.append(t)
        t *= 2
    return [*lengths, longest]
