"""The attention visibility rules by name (what each one shows is in ``reference.visibility_mask``).

Kept free of torch so that the trainer's flag parser imports without it.
"""

ATTENTION_MODES = ("causal", "intra_doc", "anchor")
