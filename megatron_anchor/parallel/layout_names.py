"""The context-parallel layouts by name (their index arithmetic is in ``cp_layout`` and ``balanced_layout``).

Kept free of torch so that the trainer's flag parser imports without it.
"""

CP_LAYOUTS = ("balanced", "megatron")


def required_multiple(layout: str, cp_size: int) -> int:
    """What the sample length must divide by: megatron-core's layout cuts ``2 * cp`` chunks, the balanced
    one gives each rank ``S / cp`` tokens (1 without context parallelism)."""
    if cp_size == 1:
        return 1
    return 2 * cp_size if layout == "megatron" else cp_size
