"""The learning-rate schedule as a pure function of the step (so resuming needs only the step)."""

from __future__ import annotations

import math


def get_lr(
    step: int, *, lr: float, min_lr: float, warmup_iters: int, decay_iters: int, decay_style: str = "cosine"
) -> float:
    """LR for optimizer step ``step`` (0-based): linear warmup to ``lr``, then decay to ``min_lr``."""
    if warmup_iters > 0 and step < warmup_iters:
        return lr * (step + 1) / warmup_iters
    if decay_style == "constant" or step >= decay_iters:
        return lr if decay_style == "constant" else min_lr
    progress = (step - warmup_iters) / max(1, decay_iters - warmup_iters)  # in [0, 1)
    if decay_style == "linear":
        coeff = 1.0 - progress
    elif decay_style == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    else:
        raise ValueError(f"unknown --lr-decay-style {decay_style!r}")
    return min_lr + coeff * (lr - min_lr)
