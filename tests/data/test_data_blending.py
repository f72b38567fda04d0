"""Megatron-style --data-path blends and --split splits over packed-anchor files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_anchor.data import build_train_valid_test_datasets

S = 4


def build(tmp_path, name: str, n_samples: int, offset: int) -> str:
    """``n_samples`` samples whose first document token identifies them: ``offset + i``."""
    prefix = str(tmp_path / name)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for i in range(n_samples):
        builder.add_document(np.array([1, offset + i, 7, 8, 9]), [1, 2, 2])
    builder.finalize(prefix + ".idx")
    return prefix


def ids(dataset) -> list[int]:
    return [int(dataset[i]["tokens"][1]) for i in range(len(dataset))]


def test_split_ranges_are_disjoint_and_shuffled(tmp_path):
    prefix = build(tmp_path, "a", 100, 1000)
    train, valid, test = build_train_valid_test_datasets([prefix], "80,15,5", S, 1234, (80, 15, 5))
    assert sorted(ids(train)) == list(range(1000, 1080))  # Megatron: contiguous ranges per split
    assert sorted(ids(valid)) == list(range(1080, 1095))
    assert sorted(ids(test)) == list(range(1095, 1100))
    assert ids(train) != sorted(ids(train))
    again = build_train_valid_test_datasets([prefix], "80,15,5", S, 1234, (80, 15, 5))[0]
    other = build_train_valid_test_datasets([prefix], "80,15,5", S, 99, (80, 15, 5))[0]
    assert ids(again) == ids(train) and ids(other) != ids(train)


def test_more_samples_than_an_epoch_repeat_reshuffled(tmp_path):
    prefix = build(tmp_path, "a", 10, 0)
    train, valid, test = build_train_valid_test_datasets([prefix], "1,0,0", S, 5, (25, 0, 0))
    order = ids(train)
    assert len(order) >= 25 and valid is None and test is None  # zero-weight splits are None
    epochs = [order[i : i + 10] for i in range(0, 30, 10)]
    assert all(sorted(epoch) == list(range(10)) for epoch in epochs) and epochs[0] != epochs[1]


def test_weighted_blend(tmp_path):
    a = build(tmp_path, "a", 400, 0)
    b = build(tmp_path, "b", 400, 10_000)
    train, valid, _ = build_train_valid_test_datasets(["0.7", a, "0.3", b], "90,10,0", S, 1, (300, 40, 0))
    assert len(train) == 300 and len(valid) == 40
    from_a = sum(1 for i in ids(train) if i < 10_000)
    assert from_a == pytest.approx(0.7 * 300, abs=2)
    assert all(i < 360 or 10_000 <= i < 10_360 for i in ids(train))
    item = train[0]
    assert set(item) >= {"tokens", "labels", "loss_mask", "doc_ids", "position_ids", "dataset_id"}


def test_layout_options_reach_the_samples(tmp_path):
    prefix = build(tmp_path, "a", 10, 0)
    train = build_train_valid_test_datasets(
        [prefix], "1,0,0", S, 1, (10, 0, 0), position_ids="reset", mask_cross_doc_labels=True
    )[0]
    item = train[0]
    assert item["position_ids"].tolist() == [0, 1, 2, 1] and item["loss_mask"].tolist() == [1, 1, 0, 1]


def _rank_orders(rank: int, world: int, port: int, prefix: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        train, valid, _ = build_train_valid_test_datasets(
            ["0.5", prefix, "0.5", prefix], "9,1,0", S, 7, (30, 5, 0)
        )
        orders = [None] * world
        dist.all_gather_object(orders, (ids(train), ids(valid)))
        if rank == 0:
            np.save(out, np.array([orders[0] == other for other in orders]))
    finally:
        dist.destroy_process_group()


def test_every_rank_builds_the_same_blend(tmp_path):
    """Built on 2 gloo processes (rank 0 first, as megatron-core's builder does): identical on both."""
    import socket

    import torch.multiprocessing as mp

    prefix = build(tmp_path, "a", 40, 0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = str(tmp_path / "same.npy")
    # fork: the children start with megatron-core already imported (a spawn re-imports it: seconds each).
    mp.start_processes(_rank_orders, args=(2, port, prefix, out), nprocs=2, join=True, start_method="fork")
    assert np.load(out).all()
