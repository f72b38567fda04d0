"""The context-parallel layouts by name (their index arithmetic is in ``cp_layout`` and ``balanced_layout``).

Kept free of torch so that the trainer's flag parser imports without it.
"""

CP_LAYOUTS = ("balanced", "megatron")
