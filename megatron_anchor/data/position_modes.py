"""The RoPE position rules of a packed sample by name (computed by ``positions.position_ids_from_doc_ids``).

Kept free of torch so that the trainer's flag parser imports without it.
"""

POSITION_MODES = ("global", "reset")
