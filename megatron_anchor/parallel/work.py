"""The attention mask's arithmetic as counts (SPEC section 1): the document-id rules, the keys each query
sees, and a context-parallel rank's share of the work. Layouts balance it, the attention plan checks its
inputs with it, throughput and the benchmarks count it: this module is its one owner.
"""

from __future__ import annotations

import torch

from megatron_anchor.parallel.layout_names import check_mode


def check_doc_ids(doc_ids: torch.Tensor, name: str = "doc_ids", dim: int = 2) -> None:
    """Raise unless ``doc_ids`` (``[b, S]``, or one sample ``[S]`` with ``dim=1``) is int64, starts every
    sample with the anchor's document 0 and never decreases; the message names the first bad value."""
    shape = "[S]" if dim == 1 else "[b, S]"
    if not isinstance(doc_ids, torch.Tensor) or doc_ids.dtype != torch.int64 or doc_ids.dim() != dim:
        has_shape = hasattr(doc_ids, "shape")
        got = f"{doc_ids.dtype} {list(doc_ids.shape)}" if has_shape else type(doc_ids).__name__
        raise ValueError(f"{name} must be a {dim}-D int64 tensor {shape} of document ids; got {got}")
    rows = doc_ids.reshape(-1, doc_ids.shape[-1])  # [b, S]
    where = (lambda b, i: f"{name}[{i}]") if dim == 1 else (lambda b, i: f"{name}[{b}, {i}]")
    if rows.shape[1] == 0:
        raise ValueError(f"{name} is empty: a sample holds at least the anchor")
    starts = torch.nonzero(rows[:, 0] != 0)
    if len(starts):
        b = int(starts[0, 0])
        got = int(rows[b, 0])
        raise ValueError(f"{where(b, 0)} must be 0 (token 0 is the anchor, document 0); got {got}")
    drops = torch.nonzero(rows[:, 1:] < rows[:, :-1])
    if len(drops):
        b, i = int(drops[0, 0]), int(drops[0, 1]) + 1
        raise ValueError(
            f"{name} must be non-decreasing (documents are contiguous); "
            f"{where(b, i)} = {int(rows[b, i])} follows {int(rows[b, i - 1])}"
        )


def visible_keys_per_query(doc_ids: torch.Tensor, mode: str) -> torch.Tensor:
    """Row sums of the visibility mask in closed form: int64 ``[..., S]``, the keys each query sees.

    This is the attention work of each query; layouts balance it and throughput counts it.
    """
    check_mode(mode)
    index = torch.arange(doc_ids.shape[-1], device=doc_ids.device).expand_as(doc_ids)
    if mode == "causal":
        return index + 1
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[..., 1:] = doc_ids[..., 1:] != doc_ids[..., :-1]
    # First token of each token's document: a running max over the document starts.
    first = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    count = index - first + 1
    if mode == "anchor":  # queries outside the anchor's document see it as one more key
        count = count + (doc_ids != doc_ids[..., :1]).long()
    return count


def visible_pairs(doc_ids: torch.Tensor, mode: str) -> int:
    """(query, key) pairs the attention mask keeps, summed over the batch ``doc_ids [b, S]``."""
    return int(visible_keys_per_query(doc_ids, mode).sum())


def rank_work(doc_row: torch.Tensor, cp_index: torch.Tensor, mode: str, a2a_size: int = 1) -> torch.Tensor:
    """fp64 ``[cp]``: each CP rank's attention work, in visible (query, key) pairs of all the heads.

    ``doc_row [S]``, ``cp_index [cp, S / cp]``. Without an all-to-all (``a2a_size`` 1) a rank's work is
    that of its own queries; with one, the ``a2a_size`` consecutive ranks of an inner group attend the
    group's queries over their share of the heads, so each does ``1 / a2a_size`` of the group's work.
    """
    per_query = visible_keys_per_query(doc_row, mode).double()
    work = per_query[cp_index].sum(dim=-1)  # [cp] work of each rank's own queries
    if a2a_size == 1:
        return work
    group = work.view(-1, a2a_size).sum(dim=1) / a2a_size  # [P]
    return group.repeat_interleave(a2a_size)
