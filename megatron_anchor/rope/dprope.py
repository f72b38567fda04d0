"""DPRoPE: per-pair choice between interpolation and extrapolation by rotary-angle distribution (SPEC 3).

For pair k the angles ``(m * theta_k) mod 2*pi`` over positions ``m in [0, length)`` are histogrammed into
``bins`` equal bins; each bin gets the pseudo-count ``eps`` before dividing by the length. A candidate's
disturbance of pair k is ``KL(P_k || Q_k)`` (natural log) of the original distribution over ``[0, L)``
against the candidate's over ``[0, L')``; a strategy's total disturbance is the mean over pairs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megatron_anchor.rope.frequencies import compute_inv_freq, default_inv_freq
from megatron_anchor.rope.scaling import RopeScaling

DPROPE_EPS = 6.103515625e-05  # float16's smallest normal, the pseudo-count per bin
DEFAULT_BINS = 360
_POSITIONS_PER_CHUNK = 1 << 16


def angle_distribution(inv_freq: torch.Tensor, length: int, bins: int = DEFAULT_BINS) -> torch.Tensor:
    """Per-pair angle distribution fp64 ``[n, bins]`` over positions ``[0, length)``: (counts + eps) / L."""
    inv_freq = inv_freq.to(torch.float64)
    n = inv_freq.shape[0]
    offsets = torch.arange(n) * bins  # pair k's bins live at [k*bins, (k+1)*bins) of one flat bincount
    counts = torch.zeros(n * bins, dtype=torch.float64)
    width = 2 * math.pi / bins
    for start in range(0, length, _POSITIONS_PER_CHUNK):
        m = torch.arange(start, min(start + _POSITIONS_PER_CHUNK, length), dtype=torch.float64)
        angles = torch.remainder(m[:, None] * inv_freq, 2 * math.pi)  # [chunk, n] fp64, exact to ~1e-12
        # remainder can round up to exactly 2*pi: clamp into the last bin
        index = (angles / width).floor().long().clamp_(0, bins - 1) + offsets
        counts += torch.bincount(index.flatten(), minlength=n * bins).to(torch.float64)
    return ((counts + DPROPE_EPS) / length).view(n, bins)


def pair_disturbance(original: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """``D_k = sum_bins P_k * ln(P_k / Q_k)`` per pair, ``[n]`` from two ``[n, bins]`` distributions."""
    return (original * (original / candidate).log()).sum(dim=-1)


def choose_interpolated_pairs(gain: torch.Tensor, interpolate_dims: int | None = None) -> list[int]:
    """Pairs to interpolate: the ``interpolate_dims/2`` largest ``D(extrap) - D(interp)``, or all > 0."""
    if interpolate_dims is None:
        return sorted(torch.nonzero(gain > 0).flatten().tolist())
    n_pairs = gain.shape[0]
    if interpolate_dims % 2 or not 0 <= interpolate_dims <= 2 * n_pairs:
        raise ValueError(
            f"--interpolate-dims must be an even number in [0, {2 * n_pairs}] (two dims per pair), "
            f"got {interpolate_dims}"
        )
    return sorted(torch.topk(gain, interpolate_dims // 2).indices.tolist())


@dataclass
class DistributionReport:
    """Per-pair disturbances of each strategy and DPRoPE's choice, for one extension L -> L'."""

    pair_disturbance: dict[str, torch.Tensor]
    """Strategy name -> ``D_k`` fp64 ``[n]`` (extrapolation, pi, ntk, yarn, dprope)."""
    inv_freq: dict[str, torch.Tensor]
    """Strategy name -> its fp64 inverse frequencies ``[n]`` (original included)."""
    dprope: RopeScaling
    """DPRoPE's chosen strategy, as ``--rope-scaling`` accepts it."""

    @property
    def disturbance(self) -> dict[str, float]:
        """Total disturbance (mean of ``D_k`` over pairs) of each strategy."""
        return {name: float(d.mean()) for name, d in self.pair_disturbance.items()}


def strategy_scalings(original_length: int, target_length: int) -> dict[str, RopeScaling]:
    """The non-DPRoPE candidates for ``L -> L'``: extrapolation, PI, NTK-aware and YaRN."""
    factor = target_length / original_length
    return {
        "extrapolation": RopeScaling("default"),
        "pi": RopeScaling("linear", factor=factor),
        "ntk": RopeScaling("ntk", factor=factor),
        "yarn": RopeScaling("yarn", factor=factor, original_max_position_embeddings=original_length),
    }


def rope_distribution_report(
    base: float,
    rotary_dim: int,
    original_length: int,
    target_length: int,
    bins: int = DEFAULT_BINS,
    interpolate_dims: int | None = None,
) -> DistributionReport:
    """Disturbance of extrapolation, PI, NTK-aware, YaRN and DPRoPE when extending ``L`` to ``L'``."""
    if not 0 < original_length < target_length:
        raise ValueError(f"need 0 < original length ({original_length}) < target length ({target_length})")
    if bins < 1:
        raise ValueError(f"--bins must be positive, got {bins}")
    original = angle_distribution(default_inv_freq(base, rotary_dim), original_length, bins)
    pair_d: dict[str, torch.Tensor] = {}
    inv_freqs = {"original": default_inv_freq(base, rotary_dim)}
    for name, scaling in strategy_scalings(original_length, target_length).items():
        inv_freqs[name], _ = compute_inv_freq(base, rotary_dim, scaling)
        pair_d[name] = pair_disturbance(original, angle_distribution(inv_freqs[name], target_length, bins))
    pairs = choose_interpolated_pairs(pair_d["extrapolation"] - pair_d["pi"], interpolate_dims)
    dprope = RopeScaling(
        "dprope",
        factor=target_length / original_length,
        original_max_position_embeddings=original_length,
        interpolated_pairs=pairs,
        rotary_dim=rotary_dim,
    )
    inv_freqs["dprope"], _ = compute_inv_freq(base, rotary_dim, dprope)
    # Each DPRoPE pair is exactly the extrapolation or the PI pair: reuse their disturbances.
    chosen = torch.zeros(rotary_dim // 2, dtype=torch.bool)
    chosen[pairs] = True
    pair_d["dprope"] = torch.where(chosen, pair_d["pi"], pair_d["extrapolation"])
    return DistributionReport(pair_disturbance=pair_d, inv_freq=inv_freqs, dprope=dprope)
