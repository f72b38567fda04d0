"""Rotary inverse frequencies (fp64) and attention factor for every strategy of SPEC section 3.

Each formula follows transformers' ``modeling_rope_utils`` where transformers has the strategy (the tests
compare against it), computed here in fp64 so the angles built from it stay exact.
"""

from __future__ import annotations

import math

import torch

from megatron_anchor.rope.scaling import RopeScaling


def default_inv_freq(base: float, rotary_dim: int) -> torch.Tensor:
    """``theta_k = base^(-2k/d)`` for k < d/2, fp64 ``[rotary_dim // 2]``."""
    if rotary_dim < 2 or rotary_dim % 2:
        raise ValueError(f"rotary dim must be a positive even number, got {rotary_dim}")
    if not base > 1:
        raise ValueError(f"--rotary-base must be > 1, got {base}")
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim
    return float(base) ** -exponent


def ntk_base(base: float, rotary_dim: int, factor: float) -> float:
    """NTK-aware base ``base * s^(d/(d-2))``."""
    return base * factor ** (rotary_dim / (rotary_dim - 2))


def _yarn_attention_factor(scaling: RopeScaling) -> float:
    """YaRN's cos/sin multiplier ``0.1*ln(s) + 1`` (or its DeepSeek mscale ratio, or the given value)."""
    if scaling.attention_factor is not None:
        return float(scaling.attention_factor)

    def get_mscale(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    if scaling.mscale and scaling.mscale_all_dim:
        return get_mscale(scaling.factor, scaling.mscale) / get_mscale(scaling.factor, scaling.mscale_all_dim)
    return get_mscale(scaling.factor)


def yarn_ramp_bounds(base: float, rotary_dim: int, scaling: RopeScaling) -> tuple[float, float]:
    """YaRN's pair-index bounds (low, high) of the ramp from extrapolation to interpolation."""

    def correction_dim(rotations: float) -> float:
        length = scaling.original_max_position_embeddings
        return rotary_dim * math.log(length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(scaling.beta_fast), correction_dim(scaling.beta_slow)
    if scaling.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, rotary_dim - 1)


def _yarn(base: float, rotary_dim: int, scaling: RopeScaling) -> torch.Tensor:
    theta = default_inv_freq(base, rotary_dim)
    low, high = yarn_ramp_bounds(base, rotary_dim, scaling)
    if low == high:
        high += 0.001  # as transformers: avoid a zero-width ramp
    # ramp = 0 keeps theta_k (high frequencies), 1 interpolates theta_k / s (low frequencies)
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    return theta / scaling.factor * ramp + theta * (1 - ramp)


def _llama3(base: float, rotary_dim: int, scaling: RopeScaling) -> torch.Tensor:
    theta = default_inv_freq(base, rotary_dim)
    length = scaling.original_max_position_embeddings
    low_freq_wavelen = length / scaling.low_freq_factor
    high_freq_wavelen = length / scaling.high_freq_factor
    wavelen = 2 * math.pi / theta
    scaled = torch.where(wavelen > low_freq_wavelen, theta / scaling.factor, theta)
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    smooth = (length / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(medium, smoothed, scaled)


def _per_pair_divisors(factors: list[float], rotary_dim: int, what: str) -> torch.Tensor:
    if len(factors) != rotary_dim // 2:
        raise ValueError(
            f"{what} has {len(factors)} entries; rotary dim {rotary_dim} has {rotary_dim // 2} pairs"
        )
    return torch.tensor(factors, dtype=torch.float64)


def _longrope(
    base: float, rotary_dim: int, scaling: RopeScaling, seq_len: int | None
) -> tuple[torch.Tensor, float]:
    original = scaling.original_max_position_embeddings
    # As transformers: the long factors apply once the sequence is longer than the original context.
    use_long = seq_len is not None and seq_len > original
    factors = scaling.long_factor if use_long else scaling.short_factor
    divisors = _per_pair_divisors(factors, rotary_dim, "longrope long_factor/short_factor")
    attention = scaling.attention_factor
    if attention is None:
        s = scaling.factor
        attention = 1.0 if s <= 1 else math.sqrt(1 + math.log(s) / math.log(original))
    return default_inv_freq(base, rotary_dim) / divisors, float(attention)


def compute_inv_freq(
    base: float, rotary_dim: int, scaling: RopeScaling | None = None, *, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """Inverse frequencies fp64 ``[rotary_dim // 2]`` and the cos/sin multiplier (mscale) of a strategy.

    ``seq_len`` (the training sequence length) matters only for ``dynamic`` (its NTK base grows with it) and
    ``longrope`` (long factors beyond the original context), as in transformers; None means the original
    context, which for longrope selects the short factors.
    """
    kind = "default" if scaling is None else scaling.rope_type
    theta = default_inv_freq(base, rotary_dim)
    if kind == "default":
        return theta, 1.0
    s = scaling.factor
    if kind == "linear":
        return theta / s, 1.0
    if kind == "ntk":
        return default_inv_freq(ntk_base(base, rotary_dim, s), rotary_dim), 1.0
    if kind == "dynamic":
        original = scaling.original_max_position_embeddings
        length = max(seq_len or original, original)
        new_base = base * ((s * length / original) - (s - 1)) ** (rotary_dim / (rotary_dim - 2))
        return default_inv_freq(new_base, rotary_dim), 1.0
    if kind == "yarn":
        return _yarn(base, rotary_dim, scaling), _yarn_attention_factor(scaling)
    if kind == "llama3":
        return _llama3(base, rotary_dim, scaling), 1.0
    if kind == "longrope":
        return _longrope(base, rotary_dim, scaling, seq_len)
    if kind == "dprope":
        if scaling.rotary_dim != rotary_dim:
            raise ValueError(
                f"the dprope description was chosen for rotary dim {scaling.rotary_dim}, not {rotary_dim}"
            )
        return theta / _per_pair_divisors(scaling.pair_factors(), rotary_dim, "dprope pairs"), 1.0
    raise ValueError(f"unknown rope_type {kind!r}")


def rotary_dim_for(head_dim: int, rotary_percent: float = 1.0) -> int:
    """Rotary channels of a head as megatron-core counts them: ``int(head_dim * rotary_percent)``, even."""
    if not 0 < rotary_percent <= 1:
        raise ValueError(f"--rotary-percent must be in (0, 1], got {rotary_percent}")
    dim = int(head_dim * rotary_percent) if rotary_percent < 1.0 else head_dim
    if dim < 2 or dim % 2:
        raise ValueError(
            f"--rotary-percent {rotary_percent} of head dim {head_dim} gives {dim} rotary channels; need even"
        )
    return dim
