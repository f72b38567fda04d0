"""RoPE kept in fp32 with exact (fp64-reduced) angles, and context-extension strategies."""

from megatron_anchor.rope.apply import apply_rotary_fp32, rotary_angles

__all__ = ["apply_rotary_fp32", "rotary_angles"]
