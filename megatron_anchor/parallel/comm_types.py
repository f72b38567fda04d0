"""Megatron's context-parallel communication types (``--cp-comm-type``) as degrees, kept free of torch.

- ``p2p``: the anchor ring over every CP rank (all-to-all degree ``A = 1``, ring ``P = cp``);
- ``a2a``: one all-to-all over the CP group swaps tokens for heads, then attention over the whole sample
  (``A = cp``, ``P = 1``);
- ``a2a+p2p``: ``--hierarchical-context-parallel-sizes A P``: the all-to-all inside each group of ``A``
  consecutive CP ranks (a node), then the ring across the ``P`` groups. CP rank ``r`` is rank ``r % A`` of
  inner group ``r // A`` and rank ``r // A`` of outer group ``r % A`` (megatron-core's hierarchical groups).

GQA: the all-to-all gives each rank ``h / A`` query heads, so ``A`` must divide the query heads of a TP
rank; the K/V heads split as well when ``A`` divides them, else each is repeated ``A / gcd(h_kv, A)`` times
first (query head ``j`` keeps K/V head ``j // (h / h_kv)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

CP_COMM_TYPES = ("p2p", "a2a", "a2a+p2p")


@dataclass(frozen=True)
class CPDegrees:
    """The all-to-all degree ``a2a`` (A, inner, consecutive ranks) and the ring's size ``ring`` (P)."""

    a2a: int
    ring: int


def check_comm_type(comm_type: str) -> None:
    """``ValueError`` naming ``--cp-comm-type`` unless ``comm_type`` is one of ``CP_COMM_TYPES``."""
    if comm_type not in CP_COMM_TYPES:
        raise ValueError(f"--cp-comm-type {comm_type}: expected one of {', '.join(CP_COMM_TYPES)}")


def cp_degrees(comm_type: str, cp_size: int, hierarchical: list[int] | None = None) -> CPDegrees:
    """``(A, P)`` of ``--cp-comm-type`` at ``--context-parallel-size`` (``hierarchical``: ``[A, P]``).

    Raises ``ValueError`` naming the flags and the numbers that do not fit.
    """
    check_comm_type(comm_type)
    if hierarchical is not None:
        if len(hierarchical) != 2 or min(hierarchical) < 1:
            raise ValueError(
                f"--hierarchical-context-parallel-sizes {' '.join(map(str, hierarchical))}: give two sizes "
                f"A P (all-to-all inside a node, ring across)"
            )
        if hierarchical[0] * hierarchical[1] != cp_size:
            raise ValueError(
                f"--hierarchical-context-parallel-sizes {hierarchical[0]} {hierarchical[1]}: their product "
                f"{hierarchical[0] * hierarchical[1]} must equal --context-parallel-size {cp_size}"
            )
    if comm_type == "p2p":
        return CPDegrees(1, cp_size)
    if comm_type == "a2a":
        return CPDegrees(cp_size, 1)
    if hierarchical is None:
        raise ValueError(
            "--cp-comm-type a2a+p2p needs --hierarchical-context-parallel-sizes A P (A x P = CP)"
        )
    return CPDegrees(hierarchical[0], hierarchical[1])


def comm_type_groups(comm_type: str, cp_group, hierarchical: list | None = None) -> tuple:
    """``(ring group, all-to-all group)`` of ``--cp-comm-type``: ``p2p`` the ring over the CP group, ``a2a``
    the all-to-all over it, ``a2a+p2p`` the all-to-all inside and the ring across ``hierarchical``, the
    ``[inner, outer]`` groups of megatron-core's ``get_hierarchical_context_parallel_groups``."""
    check_comm_type(comm_type)
    if comm_type == "p2p":
        return cp_group, None
    if comm_type == "a2a":
        return None, cp_group
    if not hierarchical or len(hierarchical) != 2:
        raise ValueError(
            "--cp-comm-type a2a+p2p needs the hierarchical CP groups [inner, outer] "
            "(--hierarchical-context-parallel-sizes A P)"
        )
    return hierarchical[1], hierarchical[0]


def hierarchical_ranks(cp_ranks: list[int], a2a_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """The inner (all-to-all: ``a2a_size`` consecutive ranks) and outer (ring: every ``a2a_size``-th rank)
    groups of one CP group's global ranks ``cp_ranks``.

    A mirror of megatron-core's ``create_hierarchical_groups`` for the loopback harnesses (tests, benchmarks)
    that make their own groups; the trainer takes megatron-core's.
    """
    inner = [list(cp_ranks[i : i + a2a_size]) for i in range(0, len(cp_ranks), a2a_size)]
    outer = [list(cp_ranks[i::a2a_size]) for i in range(a2a_size)]
    return inner, outer


def hierarchical_groups(rank: int, cp_ranks: list[int], a2a_size: int, new_group) -> list:
    """This rank's ``[inner, outer]`` groups, made by ``new_group(ranks)`` for every group of
    ``hierarchical_ranks`` in the same order on every rank (as ``torch.distributed.new_group`` requires)."""
    mine = []
    for level in hierarchical_ranks(cp_ranks, a2a_size):
        made = [(new_group(ranks), ranks) for ranks in level]
        mine.append(next(group for group, ranks in made if rank in ranks))
    return mine


def kv_head_repeat(heads: int, heads_kv: int, a2a_size: int) -> int:
    """How many times each K/V head is repeated before an all-to-all of degree ``a2a_size`` (1: none).

    ``heads``/``heads_kv``: query and K/V heads of one TP rank. Raises ``ValueError`` naming both numbers
    when the degree cannot split the query heads.
    """
    if heads % a2a_size:
        raise ValueError(
            f"the all-to-all degree {a2a_size} (--cp-comm-type a2a: the CP size; a2a+p2p: A) must divide "
            f"the {heads} query heads of a tensor-parallel rank"
        )
    return a2a_size // math.gcd(heads_kv, a2a_size)


def kv_repeat_note(heads: int, heads_kv: int, a2a_size: int, tokens: int, dim: int, dtype_bytes: int) -> str:
    """One line on the K/V repetition an all-to-all needs, with the bytes it adds (empty when none).

    ``tokens``: the tokens of one CP rank per micro-batch (``S / cp`` x micro-batch size).
    """
    repeat = kv_head_repeat(heads, heads_kv, a2a_size)
    if repeat == 1:
        return ""
    extra = 2 * tokens * heads_kv * (repeat - 1) * dim * dtype_bytes * (a2a_size - 1) / a2a_size
    return (
        f"the all-to-all degree {a2a_size} does not divide the {heads_kv} K/V heads of a tensor-parallel "
        f"rank: each K/V head is repeated {repeat}x before it, sending {extra / 2**20:.2f} MiB more per "
        f"rank, layer and micro-batch in forward (K and V) and as much in backward (their gradients)"
    )
