"""The attention visibility rules by name (what each one shows is in ``reference.visibility_mask``).

Kept free of torch so that the trainer's flag parser imports without it; the names are owned by
``megatron_anchor.parallel.layout_names`` (the layouts balance each mode's work).
"""

from megatron_anchor.parallel.layout_names import ATTENTION_MODES

__all__ = ["ATTENTION_MODES"]
