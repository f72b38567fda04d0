"""IndexedWriter against megatron-core's IndexedDatasetBuilder and IndexedDataset."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from megatron_anchor.data.indexed_writer import DTYPE_CODES, IndexedWriter


def random_documents(seed: int, n: int, high: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, high, rng.integers(1, 40)) for _ in range(rng.integers(1, 4))] for _ in range(n)]


@pytest.mark.parametrize("dtype, high", [(np.uint16, 65_000), (np.int32, 200_000)])
def test_bytes_match_megatron_builder(tmp_path, dtype, high):
    documents = random_documents(0, 50, high)
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=dtype)
    for doc in documents:
        builder.add_document(np.concatenate(doc), [len(s) for s in doc])
    builder.finalize(str(tmp_path / "ref.idx"))
    writer = IndexedWriter(str(tmp_path / "ours"), dtype)
    writer.add_document(np.concatenate(documents[0]), [len(s) for s in documents[0]])
    rest = documents[1:]  # the rest in one batched call
    writer.add_documents(
        np.concatenate([s for doc in rest for s in doc]),
        np.array([len(s) for doc in rest for s in doc]),
        np.array([len(doc) for doc in rest]),
    )
    writer.commit()
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"ref{suffix}").read_bytes()
    dataset = IndexedDataset(str(tmp_path / "ours"))
    assert dataset[3].tolist() == documents[1][0].tolist()


def test_empty_dataset_matches(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "ref.bin"), dtype=np.uint16)
    builder.finalize(str(tmp_path / "ref.idx"))
    IndexedWriter(str(tmp_path / "ours"), np.uint16).commit()
    assert (tmp_path / "ours.idx").read_bytes() == (tmp_path / "ref.idx").read_bytes()


def test_dtype_codes_are_megatrons():
    for dtype, code in DTYPE_CODES.items():
        assert DType.code_from_dtype(dtype) == code


def test_nothing_final_before_commit_and_after_abort(tmp_path):
    writer = IndexedWriter(str(tmp_path / "out"), np.uint16)
    writer.add_document(np.arange(5), [5])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin.tmp"]
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="do not add up"):
        IndexedWriter(str(tmp_path / "x"), np.uint16).add_documents(
            np.arange(5), np.array([4]), np.array([1])
        )
