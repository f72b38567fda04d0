"""The names the trainer's flag parser needs, kept free of torch: the attention modes whose work a layout
balances, and the context-parallel layouts (their index arithmetic is in ``cp_layout`` and
``balanced_layout``; what each mode shows is in ``attention.reference.visibility_mask``)."""

ATTENTION_MODES = ("causal", "intra_doc", "anchor")
CP_LAYOUTS = ("balanced", "megatron")


def check_mode(mode: str) -> None:
    """Raise ``ValueError`` unless ``mode`` is one of ``ATTENTION_MODES``."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTENTION_MODES}")


def required_multiple(layout: str, cp_size: int) -> int:
    """What the sample length must divide by: megatron-core's layout cuts ``2 * cp`` chunks, the balanced
    one gives each rank ``S / cp`` tokens (1 without context parallelism)."""
    if cp_size == 1:
        return 1
    return 2 * cp_size if layout == "megatron" else cp_size
