"""Context-parallel layouts as pure index arithmetic, and cutting tensors by them.

A layout is ``cp_index [b, cp, S / cp]``: the global token indices each CP rank holds, in local order.
``megatron``: megatron-core's load-balanced layout: the S tokens of a sample are cut into ``2*cp`` equal
chunks; CP rank ``r`` holds chunks ``r`` and ``2*cp-1-r``, concatenated in that order (pairing an early
chunk with a late one balances causal work). ``balanced``: computed per sample from its documents so that
every rank gets the same attention work (``balanced_layout``).
"""

from __future__ import annotations

import torch

from megatron_anchor.parallel.layout_names import CP_LAYOUTS


def cp_chunk_ids(cp_size: int, cp_rank: int) -> tuple[int, int]:
    """The two global chunk indices held by ``cp_rank`` (in local order)."""
    if cp_size < 1 or not 0 <= cp_rank < cp_size:
        raise ValueError(f"invalid CP rank {cp_rank} for CP size {cp_size}")
    return cp_rank, 2 * cp_size - 1 - cp_rank


def check_divisible(seq_len: int, cp_size: int) -> int:
    """Return the chunk length, raising if ``seq_len`` does not split into ``2*cp_size`` chunks."""
    if cp_size == 1:
        return seq_len
    if seq_len % (2 * cp_size) != 0:
        raise ValueError(
            f"sequence length {seq_len} must be divisible by 2*context_parallel_size = {2 * cp_size}"
        )
    return seq_len // (2 * cp_size)


def cp_token_index(seq_len: int, cp_size: int, cp_rank: int, device=None) -> torch.Tensor:
    """Global token indices ``[seq_len // cp_size]`` of the tokens ``cp_rank`` holds, in local order."""
    if cp_size == 1:
        return torch.arange(seq_len, device=device)
    chunk = check_divisible(seq_len, cp_size)
    first, second = cp_chunk_ids(cp_size, cp_rank)
    return torch.cat(
        [
            torch.arange(first * chunk, (first + 1) * chunk, device=device),
            torch.arange(second * chunk, (second + 1) * chunk, device=device),
        ]
    )


def megatron_cp_index(seq_len: int, cp_size: int, batch: int | None = None) -> torch.Tensor:
    """Every rank's global token indices ``[cp_size, seq_len // cp_size]`` in the load-balanced layout;
    with ``batch``, the same for every sample ``[batch, cp_size, seq_len // cp_size]`` (a view)."""
    index = torch.stack([cp_token_index(seq_len, cp_size, rank) for rank in range(cp_size)])
    return index if batch is None else index.expand(batch, *index.shape)


def batch_cp_index(
    doc_ids: torch.Tensor, cp_size: int, layout: str, mode: str = "anchor", a2a_size: int = 1
) -> torch.Tensor:
    """``[b, cp, S / cp]`` int64 layout of every sample of ``doc_ids [b, S]`` (host tensors).

    With an all-to-all of degree ``a2a_size`` (A, ``--cp-comm-type a2a`` / ``a2a+p2p``) the ring runs
    over ``P = cp / A`` groups of A consecutive ranks: ``balanced`` balances the work over the P groups
    and cuts each group's tokens into A consecutive pieces (any split attends the same); ``megatron`` is
    megatron-core's layout at ``cp``, which is its layout at ``P`` for the groups' tokens.
    """
    batch, seq_len = doc_ids.shape
    if cp_size % a2a_size:
        raise ValueError(f"all-to-all degree {a2a_size} does not divide the CP size {cp_size}")
    if layout == "megatron":
        return megatron_cp_index(seq_len, cp_size, batch)
    if layout == "balanced":
        from megatron_anchor.parallel.balanced_layout import balanced_cp_index

        rings = cp_size // a2a_size
        groups = torch.stack([balanced_cp_index(row, rings, mode) for row in doc_ids.cpu()])  # [b, P, S/P]
        return groups.reshape(batch, cp_size, seq_len // cp_size)
    raise ValueError(f"unknown CP layout {layout!r}; expected one of {CP_LAYOUTS}")


def ring_cp_index(cp_index: torch.Tensor, a2a_size: int) -> torch.Tensor:
    """The ring's layout ``[b, P, A * L]`` of a layout ``[b, cp, L]`` after the all-to-all: outer rank ``p``
    holds the tokens of CP ranks ``p*A .. p*A + A - 1``, in that order (the all-to-all's output order)."""
    batch, cp_size, local_len = cp_index.shape
    return cp_index.reshape(batch, cp_size // a2a_size, a2a_size * local_len)


def _batch_first(t: torch.Tensor, seq_dim: int) -> torch.Tensor:
    if seq_dim not in (0, 1):
        raise ValueError(f"seq_dim must be 0 ([S, b, ...]) or 1 ([b, S, ...]); got {seq_dim}")
    return t if seq_dim == 1 else t.transpose(0, 1)


def shard_for_cp(t: torch.Tensor, cp_index: torch.Tensor, rank: int, seq_dim: int = 1) -> torch.Tensor:
    """Rank ``rank``'s tokens of ``t`` (``[b, S, ...]``, or ``[S, b, ...]`` with ``seq_dim=0``) in the
    layout ``cp_index [b, cp, S / cp]``, in the layout's local order."""
    x = _batch_first(t, seq_dim)  # [b, S, ...]
    index = cp_index[:, rank].to(x.device)  # [b, L]
    index = index.view(*index.shape, *[1] * (x.dim() - 2)).expand(-1, -1, *x.shape[2:])
    return _batch_first(x.gather(1, index), seq_dim)


def unshard_from_cp(shards: list[torch.Tensor], cp_index: torch.Tensor, seq_dim: int = 1) -> torch.Tensor:
    """The inverse of ``shard_for_cp``: the full-sample tensor from every rank's shard (rank order)."""
    parts = [_batch_first(s, seq_dim) for s in shards]  # [b, L, ...] each
    local = torch.cat(parts, dim=1)  # [b, S, ...] in layout order
    index = cp_index.reshape(cp_index.shape[0], -1).to(local.device)  # [b, S]
    index = index.view(*index.shape, *[1] * (local.dim() - 2)).expand_as(local)
    return _batch_first(torch.empty_like(local).scatter_(1, index, local), seq_dim)
