"""Which samples each rank trains on at a step, and how a micro-batch becomes model inputs.

A global batch is ``global_batch_size`` consecutive sample indices starting at ``step * global_batch_size``
(so the data position is the step alone). Data-parallel rank ``d`` takes the d-th contiguous share and cuts
it into micro-batches; each context-parallel rank then keeps its share of the tokens in the CP layout.
The batch content is therefore the same at every DP and CP size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from megatron_anchor.data import position_ids_from_doc_ids, slice_batch_for_cp
from megatron_anchor.devices import host_to_device
from megatron_anchor.model import AnchorLayout
from megatron_anchor.parallel.cp_layout import batch_cp_index

SAMPLE_KEYS = ("tokens", "labels", "loss_mask", "doc_ids", "position_ids")


class MockPackedDataset(Dataset):
    """Synthetic packed samples in the dataset's item format (``--mock-data``; tests and benchmarks).

    Sample ``i`` is deterministic in ``(seed, i)``: an anchor (id 0), then documents of random length, each
    walking one fixed random cycle through the vocabulary from a random point (a learnable bigram chain, so
    the loss falls quickly from ``ln(vocab)``).
    """

    def __init__(
        self,
        seq_length: int,
        vocab_size: int,
        num_samples: int,
        seed: int = 0,
        position_ids: str = "global",
        anchor_id: int = 0,
    ) -> None:
        self.seq_length, self.vocab_size, self.num_samples = seq_length, vocab_size, num_samples
        self.seed, self.position_mode, self.anchor_id = seed, position_ids, anchor_id
        table_gen = torch.Generator().manual_seed(12345)  # the same chain for every split and seed
        # One random cycle through ids 1..vocab-1: a document walks it from a random point.
        self.cycle = torch.randperm(vocab_size - 1, generator=table_gen) + 1

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """One sample: tokens/labels/loss_mask/doc_ids/position_ids, each ``[S]``."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        length = self.seq_length + 1
        tokens = torch.empty(length, dtype=torch.long)
        doc_ids = torch.zeros(length, dtype=torch.long)
        tokens[0] = self.anchor_id
        start, doc = 1, 1
        while start < length:
            n = int(
                torch.randint(max(2, self.seq_length // 8), max(3, self.seq_length // 2), (1,), generator=gen)
            )
            n = min(n, length - start)
            offset = int(torch.randint(0, self.vocab_size - 1, (1,), generator=gen))
            tokens[start : start + n] = self.cycle[(offset + torch.arange(n)) % (self.vocab_size - 1)]
            doc_ids[start : start + n] = doc
            start, doc = start + n, doc + 1
        inputs_doc = doc_ids[:-1]
        return {
            "tokens": tokens[:-1],
            "labels": tokens[1:],
            "loss_mask": torch.ones(self.seq_length, dtype=torch.float32),
            "doc_ids": inputs_doc,
            "position_ids": position_ids_from_doc_ids(inputs_doc, self.position_mode),
        }


def check_sample_length(dataset: Dataset, seq_length: int, name: str) -> None:
    """Refuse a dataset whose samples are not ``S + 1`` tokens (S inputs plus the shifted label)."""
    item = dataset[0]
    missing = [k for k in SAMPLE_KEYS if k not in item]
    if missing:
        raise ValueError(f"{name} dataset items lack {missing}; expected keys {SAMPLE_KEYS}")
    got = item["tokens"].shape[-1]
    if got != seq_length:
        raise ValueError(
            f"{name} dataset samples hold {got + 1} tokens but --seq-length {seq_length} needs "
            f"{seq_length + 1}: re-pack the data with the same sequence length"
        )


def rank_sample_indices(step: int, global_batch_size: int, dp_size: int, dp_rank: int, n: int) -> list[int]:
    """Indices of the samples DP rank ``dp_rank`` trains on at ``step`` (wrapping over ``n`` samples)."""
    share = global_batch_size // dp_size
    first = step * global_batch_size + dp_rank * share
    return [(first + i) % n for i in range(share)]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples: each value ``[S]`` -> ``[b, S]``."""
    return {k: torch.stack([it[k] for it in items]) for k in SAMPLE_KEYS}


@dataclass(frozen=True)
class CPSlicing:
    """How a batch is cut over the CP group: its size, this rank, the layout and the mode it balances."""

    size: int = 1
    rank: int = 0
    layout: str = "megatron"
    mode: str = "anchor"


def to_model_inputs(batch: dict[str, torch.Tensor], cp: CPSlicing, device) -> dict:
    """CP-slice a collated ``[b, S]`` batch; returns tokens/labels/loss_mask ``[b, S/cp]`` (on ``device``),
    the layout and this rank's number of valid (loss-counted) tokens.

    The layout keeps ``doc_ids`` and ``cp_index`` on the host, where the attention plan is built.
    """
    cp_index = batch_cp_index(batch["doc_ids"], cp.size, cp.layout, cp.mode) if cp.size > 1 else None
    local = slice_batch_for_cp(batch, cp.size, cp.rank, cp_index)
    # Pinned, non-blocking copies: the host goes on preparing the step while they travel.
    positions = host_to_device(local["position_ids"], device)
    layout = AnchorLayout(doc_ids=batch["doc_ids"], positions=positions, cp_index=cp_index)
    inputs = {k: host_to_device(local[k], device) for k in ("tokens", "labels", "loss_mask")}
    # Counted here, on the host copy: counting the device tensor would wait for the device.
    return {**inputs, "layout": layout, "valid_tokens": float(local["loss_mask"].sum())}


def micro_batches(
    dataset: Dataset, indices: list[int], micro_batch_size: int, cp: CPSlicing, device
) -> list[dict]:
    """This rank's micro-batches (model inputs) for the given sample indices."""
    out = []
    for start in range(0, len(indices), micro_batch_size):
        items = [dataset[i] for i in indices[start : start + micro_batch_size]]
        out.append(to_model_inputs(collate(items), cp, device))
    return out
