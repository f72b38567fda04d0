"""RoPE kept in fp32 with exact (fp64-reduced) angles, and context-extension strategies (DPRoPE among them).

Typical use in a model (``args`` from a parser given ``add_rope_args``)::

    scaling = rope_scaling_from_args(args)
    d_rot = rotary_dim_for(head_dim, args.rotary_percent)
    inv_freq, mscale = compute_inv_freq(args.rotary_base, d_rot, scaling, seq_len=args.seq_length)
    q = apply_rotary_fp32(q, positions, inv_freq, mscale, interleaved=args.rotary_interleaved)

or, building the fp64-reduced angle table once per step and reusing it for q and k of every layer::

    angles = rotary_angles(positions, inv_freq)  # [s, d_rot/2] or [b, s, d_rot/2] fp32
    q = apply_rotary_angles(q, angles, mscale, interleaved=args.rotary_interleaved)
"""

from megatron_anchor.rope.apply import (
    BACKEND_ENV,
    apply_rotary_angles,
    apply_rotary_fp32,
    resolve_backend,
    rotary_angles,
    rotate_fp32,
    te_rope_available,
)
from megatron_anchor.rope.args import ROPE_DEFAULTS, add_rope_args, parse_rope_scaling, rope_scaling_from_args
from megatron_anchor.rope.dprope import (
    DPROPE_EPS,
    angle_distribution,
    choose_interpolated_pairs,
    pair_disturbance,
    rope_distribution_report,
)
from megatron_anchor.rope.frequencies import compute_inv_freq, default_inv_freq, rotary_dim_for
from megatron_anchor.rope.scaling import ROPE_TYPES, RopeScaling

__all__ = [
    "BACKEND_ENV",
    "DPROPE_EPS",
    "ROPE_DEFAULTS",
    "ROPE_TYPES",
    "RopeScaling",
    "add_rope_args",
    "angle_distribution",
    "apply_rotary_angles",
    "apply_rotary_fp32",
    "choose_interpolated_pairs",
    "compute_inv_freq",
    "default_inv_freq",
    "pair_disturbance",
    "parse_rope_scaling",
    "resolve_backend",
    "rope_distribution_report",
    "rope_scaling_from_args",
    "rotary_angles",
    "rotary_dim_for",
    "rotate_fp32",
    "te_rope_available",
]
