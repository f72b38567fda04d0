"""IndexedWriter against megatron-core's IndexedDatasetBuilder and IndexedDataset."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import DType, IndexedDataset, IndexedDatasetBuilder

from megatron_anchor._output_lock import OutputLockedError
from megatron_anchor.data.indexed_writer import DTYPE_CODES, IndexedWriter, check_indexed_pair


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
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [os.path.basename(writer.tmp_bin), "out.lock"]
    )
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="do not add up"):
        IndexedWriter(str(tmp_path / "x"), np.uint16).add_documents(
            np.arange(5), np.array([4]), np.array([1])
        )


def test_second_writer_of_a_prefix_is_refused_until_the_first_ends(tmp_path):
    """The output is locked while written; temporary names differ between runs; the lock file goes away."""
    prefix = str(tmp_path / "out")
    first = IndexedWriter(prefix, np.uint16)
    with pytest.raises(OutputLockedError, match=rf"out\.lock: another run \(pid {os.getpid()} on "):
        IndexedWriter(prefix, np.uint16)
    first.abort()
    second = IndexedWriter(prefix, np.uint16)
    assert second.tmp_bin != first.tmp_bin and second.tmp_idx != first.tmp_idx
    second.add_document(np.arange(5), [5])
    second.commit()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin", "out.idx", "out.meta.json"]
    IndexedWriter(prefix, np.uint16).abort()  # and it can be written again


def test_stale_temporaries_are_removed_by_the_next_writer(tmp_path):
    """A killed run's temporary files go when the prefix is next locked; other files stay."""
    stale = ["out.bin.123-0a1b2c3d.tmp", "out.idx.123-0a1b2c3d.tmp", "out.meta.json.123-0a1b2c3d.tmp"]
    kept = ["out.bin", "out.notes.tmp", "out_other.bin.123-0a1b2c3d.tmp", "outx.bin.123-0a1b2c3d.tmp"]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    writer = IndexedWriter(str(tmp_path / "out"), np.uint16)
    names = {p.name for p in tmp_path.iterdir()}
    assert names == {*kept, "out.lock", os.path.basename(writer.tmp_bin)}
    writer.abort()


def test_files_are_synced_before_the_renames(tmp_path, monkeypatch):
    """The three files reach the disk before any is renamed, the index is renamed last (a crash never leaves
    an ``.idx`` beside a ``.bin`` it was not written with), and the directory is synced after the renames."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(source, target):
        events.append(("rename", os.path.basename(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    writer = IndexedWriter(str(tmp_path / "out"), np.uint16)
    writer.add_document(np.arange(5), [5])
    writer.commit()
    tmp_bin, tmp_idx, tmp_record = (
        os.path.basename(path) for path in (writer.tmp_bin, writer.tmp_idx, writer.tmp_record)
    )
    assert events == [
        ("fsync", tmp_bin),
        ("fsync", tmp_idx),
        ("fsync", tmp_record),
        ("rename", "out.meta.json"),
        ("rename", "out.bin"),
        ("rename", "out.idx"),
        ("fsync", tmp_path.name),
    ]


def test_pair_check_refuses_mismatched_incomplete_and_empty_pairs(tmp_path):
    """check_indexed_pair against files written by megatron-core's own builder."""
    for name, n in (("a", 30), ("b", 20)):
        builder = IndexedDatasetBuilder(str(tmp_path / f"{name}.bin"), dtype=np.uint16)
        for doc in random_documents(n, n, 1000):
            builder.add_document(np.concatenate(doc), [len(s) for s in doc])
        builder.finalize(str(tmp_path / f"{name}.idx"))
    check_indexed_pair(str(tmp_path / "a"))
    a_size, b_size = (os.path.getsize(tmp_path / f"{name}.bin") for name in "ab")
    (tmp_path / "mixed.idx").write_bytes((tmp_path / "a.idx").read_bytes())
    (tmp_path / "mixed.bin").write_bytes((tmp_path / "b.bin").read_bytes())
    message = rf"mixed\.bin has {b_size:,} bytes but .*mixed\.idx describes {a_size:,}"
    with pytest.raises(ValueError, match=message):
        check_indexed_pair(str(tmp_path / "mixed"))
    (tmp_path / "mixed.bin").write_bytes((tmp_path / "a.bin").read_bytes()[:-2])  # a truncated copy
    with pytest.raises(ValueError, match=rf"has {a_size - 2:,} bytes but"):
        check_indexed_pair(str(tmp_path / "mixed"))
    (tmp_path / "mixed.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-8])
    with pytest.raises(ValueError, match=r"mixed\.idx: corrupt index"):
        check_indexed_pair(str(tmp_path / "mixed"))
    (tmp_path / "mixed.idx").write_bytes(b"MMIDIDX")
    with pytest.raises(ValueError, match=r"mixed\.idx: not a megatron-core MMIDIDX index"):
        check_indexed_pair(str(tmp_path / "mixed"))
    IndexedWriter(str(tmp_path / "empty"), np.uint16).commit()
    with pytest.raises(ValueError, match=r"empty\.idx: the dataset holds no tokens"):
        check_indexed_pair(str(tmp_path / "empty"))


def _write(prefix: str, documents: list[list[np.ndarray]]) -> None:
    writer = IndexedWriter(prefix, np.uint16, {"layout": "plain"})
    for doc in documents:
        writer.add_document(np.concatenate(doc), [len(s) for s in doc])
    writer.commit()


def test_an_index_of_another_packing_beside_a_bin_of_the_same_size_is_refused(tmp_path):
    """The same tokens in other documents: the sizes agree, the record's sampled checksums do not."""
    tokens = np.random.default_rng(0).integers(0, 1000, 30_000)
    cuts_a, cuts_b = [0, 7_000, 19_000, 30_000], [0, 11_000, 23_000, 30_000]
    _write(str(tmp_path / "a"), [[tokens[s:e]] for s, e in zip(cuts_a, cuts_a[1:])])
    _write(str(tmp_path / "b"), [[tokens[s:e]] for s, e in zip(cuts_b, cuts_b[1:])])
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert check_indexed_pair(str(tmp_path / "a"))["layout"] == "plain"
    (tmp_path / "a.idx").write_bytes((tmp_path / "b.idx").read_bytes())  # sizes agree: the old check passes
    a = str(tmp_path / "a")
    with pytest.raises(ValueError) as error:
        check_indexed_pair(a)
    message = str(error.value)
    assert message.startswith(f"{a}.idx and {a}.bin were not written together: {a}.idx is not the file run ")
    assert f"(other bytes at offset 0, per {a}.meta.json)" in message and "\n" not in message


def test_a_bin_of_another_run_is_refused_in_a_few_reads(tmp_path, monkeypatch):
    """A .bin with other tokens in the middle (the same size), found by reading a few blocks only."""
    rng = np.random.default_rng(1)
    documents = [[rng.integers(0, 1000, 40_000)] for _ in range(5)]  # 400 KB of tokens: 98 blocks of 4 KiB
    _write(str(tmp_path / "a"), documents)
    data = bytearray((tmp_path / "a.bin").read_bytes())
    record = json.loads((tmp_path / "a.meta.json").read_text())
    offset = record["files"][".bin"]["samples"][7][0]
    data[offset + 100] ^= 0xFF
    (tmp_path / "a.bin").write_bytes(bytes(data))
    reads = []
    real_open = open

    def counting_open(path, *args, **kwargs):
        stream = real_open(path, *args, **kwargs)
        if str(path).endswith(".bin"):
            real_read = stream.read
            stream.read = lambda n=-1: reads.append(n) or real_read(n)  # noqa: B023
        return stream

    monkeypatch.setattr("builtins.open", counting_open)
    with pytest.raises(ValueError, match=rf"a\.bin is not the file run .*other bytes at offset {offset:,}"):
        check_indexed_pair(str(tmp_path / "a"))
    assert 0 < len(reads) <= 16 and sum(reads) <= 16 * 4096


def test_files_without_a_record_get_the_size_checks_only(tmp_path):
    """Megatron-LM's own output has no record: read as before; a damaged record is named."""
    builder = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    for doc in random_documents(3, 10, 1000):
        builder.add_document(np.concatenate(doc), [len(s) for s in doc])
    builder.finalize(str(tmp_path / "m.idx"))
    assert check_indexed_pair(str(tmp_path / "m")) is None
    (tmp_path / "m.meta.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"m\.meta\.json: unreadable dataset record"):
        check_indexed_pair(str(tmp_path / "m"))
