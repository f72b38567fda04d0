"""The document-aware CP layout: a partition, balanced work, one kernel call per ring step and source."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from megatron_anchor.attention.geometry import SampleGeometry
from megatron_anchor.parallel import balanced_cp_index, megatron_cp_index

MODES = ("anchor", "intra_doc", "causal")


def doc_row_of(lengths: list[int]) -> torch.Tensor:
    """doc_row ``[1 + sum(lengths)]``: the anchor (document 0), then documents 1, 2, ... of ``lengths``."""
    ids = torch.repeat_interleave(torch.arange(1, len(lengths) + 1), torch.tensor(lengths, dtype=torch.long))
    return torch.cat([torch.zeros(1, dtype=torch.long), ids])


def lognormal_row(seq_len: int, median: float, seed: int) -> torch.Tensor:
    """Realistic doc_row ``[S]``: log-normal document lengths (sigma 0.7), the last one cut at S."""
    rng = np.random.default_rng(seed)
    lengths = np.maximum(1, (np.exp(rng.normal(0, 0.7, seq_len)) * median).astype(np.int64))
    count = int(np.searchsorted(np.cumsum(lengths), seq_len)) + 1  # enough documents to fill S
    return doc_row_of(lengths[:count].tolist())[:seq_len]


def rank_work(doc_row: torch.Tensor, index: torch.Tensor, mode: str) -> np.ndarray:
    """``[cp]`` keys seen by each rank's queries, counted per document apart from the code under test."""
    docs = np.zeros(len(doc_row), dtype=np.int64) if mode == "causal" else doc_row.numpy()
    starts = np.flatnonzero(np.concatenate([[True], docs[1:] != docs[:-1]]))
    lengths = np.diff(np.append(starts, len(docs)))
    work = np.arange(len(docs)) - np.repeat(starts, lengths) + 1  # the keys of its document up to it
    if mode == "anchor":
        work += docs != docs[0]  # and the anchor
    return work[index.numpy()].sum(axis=1)


def assert_partition(index: torch.Tensor, seq_len: int, cp_size: int) -> None:
    assert index.dtype == torch.int64 and tuple(index.shape) == (cp_size, seq_len // cp_size)
    assert bool((index[:, 1:] > index[:, :-1]).all()), "each rank's tokens in ascending order"
    assert torch.equal(index.flatten().sort().values, torch.arange(seq_len)), "every token exactly once"


def edge_rows(cp_size: int) -> dict[str, torch.Tensor]:
    """Edge-case samples whose length divides by ``cp_size``."""
    seq_len = 24 * cp_size
    prime = [7, 11, 13, 5, 3, 17, 19, 23] * seq_len
    return {
        "anchor only": torch.zeros(seq_len, dtype=torch.long),
        "one document": doc_row_of([seq_len - 1]),
        "one-token documents": torch.arange(seq_len),
        "lengths prime to 2cp": doc_row_of(prime)[:seq_len],
        "one long, many tiny": doc_row_of([seq_len // 2] + [1] * seq_len)[:seq_len],
        "gaps in ids": doc_row_of([3, 9, 2, 30] * seq_len)[:seq_len] * 5,
    }


@pytest.mark.parametrize("cp_size", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("mode", MODES)
def test_edge_cases_are_partitions_with_one_call_per_source(cp_size, mode):
    for name, doc_row in edge_rows(cp_size).items():
        index = balanced_cp_index(doc_row, cp_size, mode)
        assert_partition(index, len(doc_row), cp_size)
        calls = SampleGeometry(doc_row.numpy(), index.numpy(), mode).full_calls()
        assert calls.max() <= 1, f"{name}: {calls.max()} kernel calls on one source"


@pytest.mark.parametrize("mode", MODES)
def test_one_token_per_rank(mode):
    doc_row = doc_row_of([3, 1, 4, 1, 5])  # cp = S: every rank holds one token
    index = balanced_cp_index(doc_row, len(doc_row), mode)
    assert_partition(index, len(doc_row), len(doc_row))


def test_random_layouts_are_partitions_with_one_call_per_source():
    rng = np.random.default_rng(0)
    for trial in range(300):
        cp_size, local_len = int(rng.choice([2, 3, 4, 5, 8, 16])), int(rng.integers(1, 48))
        seq_len = cp_size * local_len
        mean = float(rng.choice([1.5, 4, 20, seq_len / 3]))
        lengths = np.maximum(1, rng.exponential(mean, seq_len)).astype(np.int64).tolist()
        doc_row, mode = doc_row_of(lengths)[:seq_len], str(rng.choice(MODES))
        index = balanced_cp_index(doc_row, cp_size, mode)
        assert_partition(index, seq_len, cp_size)
        calls = SampleGeometry(doc_row.numpy(), index.numpy(), mode).full_calls()
        assert calls.max() <= 1, f"trial {trial}: {calls.max()} calls, cp {cp_size}, {mode}, {lengths}"


def test_deterministic_and_per_sample():
    first, second = lognormal_row(8192, 200, seed=0), lognormal_row(8192, 200, seed=1)
    index = balanced_cp_index(first, 4)
    assert torch.equal(index, balanced_cp_index(first.clone(), 4))
    assert not torch.equal(index, balanced_cp_index(second, 4)), "the layout follows the documents"


@pytest.mark.parametrize("seq_len, cp_size", [(64, 2), (4096, 8), (4096, 32), (96, 3)])
def test_causal_is_megatron_layout(seq_len, cp_size):
    index = balanced_cp_index(lognormal_row(seq_len, 30, seed=2), cp_size, "causal")
    if seq_len % (2 * cp_size) == 0:
        assert torch.equal(index, megatron_cp_index(seq_len, cp_size).sort(dim=1).values)
    work = rank_work(torch.zeros(seq_len, dtype=torch.long), index, "causal")
    assert work.max() / work.mean() < 1 + 2 * cp_size / seq_len


@pytest.mark.parametrize("mode", ["anchor", "intra_doc"])
@pytest.mark.parametrize("median", [64, 1024])
@pytest.mark.parametrize("cp_size", [2, 4, 8, 16])
def test_work_is_balanced_on_realistic_mixes(mode, median, cp_size):
    seq_len = 65536
    for seed in range(2):
        doc_row = lognormal_row(seq_len, median, seed)
        if seed == 1:  # plus one document of S/2 in the middle
            doc_row = torch.cat([doc_row[: seq_len // 4], doc_row[seq_len // 4 :] + 1])
            doc_row[seq_len // 4 : 3 * seq_len // 4] = doc_row[seq_len // 4]
        index = balanced_cp_index(doc_row, cp_size, mode)
        work = rank_work(doc_row, index, mode)
        megatron = rank_work(doc_row, megatron_cp_index(seq_len, cp_size), mode)
        assert work.max() / work.mean() <= 1.03, f"seed {seed}: busiest rank {work.max() / work.mean():.3f}x"
        assert work.max() <= megatron.max()


@pytest.mark.parametrize("seq_len, cp_size", [(32768, 32), (65536, 64)])
def test_work_is_balanced_with_a_few_documents_per_rank(seq_len, cp_size):
    # 1K tokens per rank, documents of ~500: the light items run out and the last ranks take the rest.
    for seed in range(3):
        doc_row = lognormal_row(seq_len, 512, seed)
        work = rank_work(doc_row, balanced_cp_index(doc_row, cp_size), "anchor")
        assert work.max() / work.mean() <= 1.03, f"seed {seed}: busiest rank {work.max() / work.mean():.3f}x"


@pytest.mark.parametrize("median", [16, 32, 100])
@pytest.mark.parametrize("cp_size", [2, 4, 8])
def test_short_documents_send_fewer_rows_than_megatron(median, cp_size):
    seq_len = 65536
    for seed in range(2):
        doc_row = lognormal_row(seq_len, median, seed)
        balanced = SampleGeometry(doc_row.numpy(), balanced_cp_index(doc_row, cp_size).numpy(), "anchor")
        megatron = SampleGeometry(doc_row.numpy(), megatron_cp_index(seq_len, cp_size).numpy(), "anchor")
        rows, megatron_rows = balanced.received_rows(), megatron.received_rows()
        assert rows.max() <= megatron_rows.max() and rows.sum() <= megatron_rows.sum(), (rows, megatron_rows)


@pytest.mark.parametrize(
    "doc_row, cp_size, mode, message",
    [
        (torch.zeros(8), 2, "anchor", r"1-D int64 .* got torch.float32 \[8\]"),
        (torch.zeros(2, 4, dtype=torch.long), 2, "anchor", r"got torch.int64 \[2, 4\]"),
        ([0, 1, 1, 2], 2, "anchor", r"got list"),
        (torch.tensor([1, 1, 2, 2]), 2, "anchor", r"doc_row\[0\] must be 0 .* got 1"),
        (torch.tensor([0, 2, 1, 1]), 2, "anchor", r"doc_row\[2\] = 1 follows 2"),
        (torch.tensor([0, 1, 1, 2, 2, 2]), 4, "anchor", r"cp_size 4 .* sequence length 6"),
        (torch.tensor([0, 1, 1, 2]), 0, "anchor", r"cp_size 0"),
        (torch.tensor([0, 1, 1, 2]), 2, "sliding", r"unknown attention mode 'sliding'"),
    ],
)
def test_bad_input_is_refused_with_the_value(doc_row, cp_size, mode, message):
    with pytest.raises(ValueError, match=message):
        balanced_cp_index(doc_row, cp_size, mode)
