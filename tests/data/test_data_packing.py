"""The packers as pure functions over document lengths."""

from __future__ import annotations

import random

import pytest

from megatron_anchor.data.packing import (
    PACKERS,
    count_cut_documents,
    count_greedy_cuts,
    pack,
    pack_best_fit,
    pack_greedy,
    sample_tokens,
)


def random_lengths(n: int, seed: int, mean_log: float = 5.0) -> list[int]:
    rng = random.Random(seed)
    return [max(1, int(rng.lognormvariate(mean_log, 1.0))) for _ in range(n)]


def assert_exact_cover(samples, lengths, capacity):
    """Every token of every document in exactly one piece; all samples full but the last."""
    covered = {doc: [] for doc in range(len(lengths))}
    for sample in samples:
        for doc, start, end in sample:
            assert 0 <= start < end <= lengths[doc]
            covered[doc].append((start, end))
    for doc, ranges in covered.items():
        position = 0
        for start, end in sorted(ranges):
            assert start == position, f"document {doc}: gap or overlap at {start}"
            position = end
        assert position == lengths[doc]
    assert all(sample_tokens(s) == capacity for s in samples[:-1])
    assert 0 < sample_tokens(samples[-1]) <= capacity
    assert len(samples) == -(-sum(lengths) // capacity)


@pytest.mark.parametrize("mode", PACKERS)
@pytest.mark.parametrize("capacity", [1, 7, 64, 1000])
def test_every_token_once(mode, capacity):
    lengths = random_lengths(300, seed=capacity)
    assert_exact_cover(list(pack(lengths, capacity, mode)), lengths, capacity)


def test_greedy_keeps_input_order():
    lengths = [5, 3, 9, 1, 4]
    samples = list(pack_greedy(lengths, 6))
    assert samples == [
        [(0, 0, 5), (1, 0, 1)],
        [(1, 1, 3), (2, 0, 4)],
        [(2, 4, 9), (3, 0, 1)],
        [(4, 0, 4)],
    ]
    assert count_cut_documents(samples, lengths) == 2


def test_best_fit_hand_example():
    # 4+2 and 3+3 fill two samples of 6 without cutting anything; greedy cuts.
    lengths = [4, 3, 3, 2]
    samples = list(pack_best_fit(lengths, 6))
    assert sorted(sorted(doc for doc, _, _ in s) for s in samples) == [[0, 3], [1, 2]]
    assert count_cut_documents(samples, lengths) == 0
    assert count_cut_documents(pack_greedy(lengths, 6), lengths) == 1


@pytest.mark.parametrize("capacity", [256, 2048])
def test_best_fit_cuts_fewer_documents(capacity):
    lengths = random_lengths(3000, seed=1)
    greedy = count_cut_documents(pack_greedy(lengths, capacity), lengths)
    best_fit = count_cut_documents(pack_best_fit(lengths, capacity), lengths)
    unavoidable = sum(1 for n in lengths if n > capacity)
    assert unavoidable <= best_fit < greedy
    assert best_fit < 0.7 * greedy


def test_long_documents_and_exact_fits():
    lengths = [10, 25, 10, 5, 5]
    # Greedy cuts the long document and, after its 5-token tail, the next one; best-fit only the long one.
    for mode, cuts in (("greedy", 2), ("best-fit", 1)):
        samples = list(pack(lengths, 10, mode))
        assert_exact_cover(samples, lengths, 10)
        assert [(0, 0, 10)] in samples  # a document of exactly one sample is never cut
        assert count_cut_documents(samples, lengths) == cuts


@pytest.mark.parametrize("capacity", [1, 5, 64, 1000])
def test_greedy_cut_count_without_packing(capacity):
    lengths = random_lengths(500, seed=capacity) + [0, capacity, 2 * capacity, 0, 3]
    expected = count_cut_documents(pack_greedy(lengths, capacity), lengths)
    assert count_greedy_cuts(lengths, capacity) == expected


def test_empty_input_and_bad_capacity():
    for mode in PACKERS:
        assert list(pack([], 8, mode)) == []
        with pytest.raises(ValueError, match="capacity"):
            list(pack([3], 0, mode))
    with pytest.raises(ValueError, match="packing mode"):
        pack([3], 4, "first-fit")


def test_best_fit_streams_within_its_window():
    """The packer pulls lengths lazily: it yields a sample before reading far beyond its window."""
    capacity, window = 50, 4
    lengths = random_lengths(5000, seed=3, mean_log=3.0)
    consumed = 0

    def feed():
        nonlocal consumed
        for n in lengths:
            consumed += 1
            yield n

    samples = pack_best_fit(feed(), capacity, window=window)
    next(samples)
    tokens_read = sum(lengths[:consumed])
    assert consumed < len(lengths) and tokens_read <= (window + 1) * capacity + max(lengths)
