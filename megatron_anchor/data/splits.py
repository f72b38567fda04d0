"""Megatron's ``--split`` and ``--data-path`` weights checked before megatron-core parses them (torch-free).

megatron-core reads any string as a split (``abc`` becomes NaN ratios, ``0,0,100`` an empty training split)
and asserts on a non-positive blend weight deep inside its builder; these give one-line errors instead.
"""

from __future__ import annotations

import math
import re

SPLIT_EXAMPLE = "969,30,1"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_split(split: str) -> None:
    """``--split`` is up to three non-negative numbers (train, valid, test) and the train part is positive.

    Quotes around the value are part of no number: Megatron-LM's example scripts pass ``--split '99,1,0'``
    through an unquoted array expansion, so the program receives the quotes, and megatron-core reads the
    numbers between them."""
    numbers = [_number(part.strip()) for part in re.split(r"[,/]", split.strip().strip("'\""))]
    if not 1 <= len(numbers) <= 3 or any(n is None or not 0 <= n < math.inf for n in numbers):
        raise ValueError(
            f"--split {split}: expected up to three comma-separated non-negative numbers "
            f"(train,valid,test proportions), e.g. {SPLIT_EXAMPLE}"
        )
    if numbers[0] == 0:
        raise ValueError(f"--split {split} leaves nothing to train on: its first (train) part must be > 0")


def check_blend(data_path: list[str]) -> None:
    """``--data-path`` is prefixes, or ``weight prefix`` pairs whose weights are positive numbers."""
    weights = [_number(text) for text in data_path[0::2]]
    if len(data_path) % 2 == 1:
        if weights[0] is not None:
            raise ValueError(
                f"--data-path {' '.join(data_path)}: weights and prefixes must come in pairs "
                f"({len(data_path)} entries)"
            )
        return
    if all(weight is None for weight in weights):
        return  # prefixes only
    for text, weight, prefix in zip(data_path[0::2], weights, data_path[1::2]):
        if weight is None:
            raise ValueError(
                f"--data-path: {text!r} stands where the weight of {prefix} is expected (give "
                "'weight prefix' pairs, or prefixes only)"
            )
        if not 0 < weight < math.inf:
            raise ValueError(f"--data-path: weight {text} of {prefix} must be a positive number")
