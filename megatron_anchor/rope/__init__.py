"""RoPE kept in fp32 with exact (fp64-reduced) angles, and context-extension strategies (DPRoPE among them).

Typical use in a model (``args`` from a parser given ``add_rope_args``)::

    scaling = rope_scaling_from_args(args)
    d_rot = rotary_dim_for(head_dim, args.rotary_percent)
    inv_freq, mscale = compute_inv_freq(args.rotary_base, d_rot, scaling, seq_len=args.seq_length)
    q = apply_rotary_fp32(q, positions, inv_freq, mscale, interleaved=args.rotary_interleaved)

or, building the fp64-reduced angle table once per step and reusing it for q and k of every layer::

    angles = rotary_angles(positions, inv_freq)  # [s, d_rot/2] or [b, s, d_rot/2] fp32
    q = apply_rotary_angles(q, angles, mscale, interleaved=args.rotary_interleaved)

Names are imported on first use (PEP 562): the flags (``add_rope_args``) and ``RopeScaling`` need no torch.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "BACKEND_ENV": "apply",
    "apply_rotary_angles": "apply",
    "apply_rotary_fp32": "apply",
    "resolve_backend": "apply",
    "rotary_angles": "apply",
    "rotate_fp32": "apply",
    "te_rope_available": "apply",
    "ROPE_DEFAULTS": "args",
    "add_rope_args": "args",
    "parse_rope_scaling": "args",
    "rope_scaling_from_args": "args",
    "DPROPE_EPS": "dprope",
    "angle_distribution": "dprope",
    "choose_interpolated_pairs": "dprope",
    "pair_disturbance": "dprope",
    "rope_distribution_report": "dprope",
    "compute_inv_freq": "frequencies",
    "default_inv_freq": "frequencies",
    "rotary_dim_for": "frequencies",
    "ROPE_TYPES": "scaling",
    "RopeScaling": "scaling",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
