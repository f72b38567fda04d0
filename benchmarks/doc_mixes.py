"""Document mixes of packed samples, shared by the benchmarks: document ids of realistic length distributions.

Imported by the scripts beside it (``from doc_mixes import ...``); the package never imports it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def realistic_doc_ids(
    seq_len: int, seed: int = 0, median: int = 1024, half_document: bool = True
) -> torch.Tensor:
    """doc_ids ``[1, S]``: the anchor, then log-normal documents (median ``median``, sigma 0.7).

    With ``half_document`` one document of S/2 tokens sits at a random place among them.
    """
    gen = torch.Generator().manual_seed(seed)
    lengths = (torch.randn(seq_len // 16 + 8, generator=gen) * 0.7).exp().mul(median).long().clamp_min(1)
    budget = seq_len // 2 if half_document else seq_len
    keep = int((lengths.cumsum(0) < budget).sum()) + 1
    lengths = lengths[:keep].tolist()
    if half_document:
        lengths.insert(int(torch.randint(0, keep + 1, (1,), generator=gen)), seq_len // 2)
    ids = torch.repeat_interleave(torch.arange(1, len(lengths) + 1), torch.tensor(lengths))[: seq_len - 1]
    return torch.cat([torch.zeros(1, dtype=torch.long), ids])[None]


# name -> (description, doc_ids [1, S] from (S, seed))
DOCUMENT_MIXES: dict[str, tuple[str, Callable[[int, int], torch.Tensor]]] = {
    "1K+S/2": ("log-normal, median 1K, plus one S/2 document", lambda s, seed: realistic_doc_ids(s, seed)),
    "1K": ("log-normal, median 1K", lambda s, seed: realistic_doc_ids(s, seed, half_document=False)),
    "300": ("log-normal, median 300", lambda s, seed: realistic_doc_ids(s, seed, 300, half_document=False)),
    "long": (
        "a few very long documents (log-normal, median S/8)",
        lambda s, seed: realistic_doc_ids(s, seed, s // 8, half_document=False),
    ),
}
