"""AnchorPackedDataset on hand-built packed files, and the tool's output read back as training tensors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_anchor.data import AnchorPackedDataset

S = 8
ANCHOR = 99


def build(tmp_path, samples: list[list[list[int]]], name: str = "packed") -> str:
    """A packed file from samples given as lists of documents (the anchor is added)."""
    prefix = str(tmp_path / name)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for docs in samples:
        tokens = [ANCHOR] + [t for doc in docs for t in doc]
        builder.add_document(np.array(tokens), [1] + [len(doc) for doc in docs])
    builder.finalize(prefix + ".idx")
    return prefix


def test_full_sample(tmp_path):
    prefix = build(tmp_path, [[[10, 11, 12], [20, 21], [30, 31, 32]]])
    item = AnchorPackedDataset(prefix, seq_length=S)[0]
    assert item["tokens"].tolist() == [ANCHOR, 10, 11, 12, 20, 21, 30, 31]
    assert item["labels"].tolist() == [10, 11, 12, 20, 21, 30, 31, 32]
    assert item["doc_ids"].tolist() == [0, 1, 1, 1, 2, 2, 3, 3]
    assert item["position_ids"].tolist() == list(range(S))
    assert item["loss_mask"].tolist() == [1.0] * S
    assert {k: v.dtype for k, v in item.items()} == {
        "tokens": torch.int64,
        "labels": torch.int64,
        "doc_ids": torch.int64,
        "position_ids": torch.int64,
        "loss_mask": torch.float32,
    }


def test_reset_positions_and_cross_document_mask(tmp_path):
    prefix = build(tmp_path, [[[10, 11, 12], [20, 21], [30, 31, 32]]])
    item = AnchorPackedDataset(prefix, seq_length=S, position_ids="reset", mask_cross_doc_labels=True)[0]
    assert item["position_ids"].tolist() == [0, 1, 2, 3, 1, 2, 1, 2]
    # Labels 20 (index 3) and 30 (index 5) start the next document; the anchor's label 10 is kept.
    assert item["loss_mask"].tolist() == [1, 1, 1, 0, 1, 0, 1, 1]


def test_partial_last_sample_is_padded_and_masked(tmp_path):
    prefix = build(tmp_path, [[[1, 2, 3, 4, 5, 6, 7, 8]], [[40, 41], [50]]])
    dataset = AnchorPackedDataset(prefix, seq_length=S)
    assert len(dataset) == 2
    item = dataset[1]
    assert item["tokens"].tolist() == [ANCHOR, 40, 41, 50] + [ANCHOR] * 4
    assert item["loss_mask"].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert item["doc_ids"].tolist() == [0, 1, 1, 2, 3, 3, 3, 3]  # the padding is a document of its own


@pytest.mark.parametrize(
    "samples, message",
    [
        ([[[1] * 8], [[1] * 7]], r"sample 1 has 8 tokens but seq_length 8 needs 9"),  # not the last one
        ([[[1] * 9]], r"sample 0 has 10 tokens"),
    ],
)
def test_wrong_sample_length_names_file(tmp_path, samples, message):
    samples = samples + [[[2] * 8]] if len(samples) > 1 else samples
    prefix = build(tmp_path, samples)
    with pytest.raises(ValueError, match=rf"{prefix}\.idx: {message}"):
        AnchorPackedDataset(prefix, seq_length=S)


def test_missing_anchor_sequence(tmp_path):
    prefix = str(tmp_path / "noanchor")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    builder.add_document(np.arange(9), [2, 7])
    builder.finalize(prefix + ".idx")
    with pytest.raises(ValueError, match="1-token anchor"):
        AnchorPackedDataset(prefix, seq_length=S)


def test_reads_the_tool_output(tmp_path):
    from anchor_data_helpers import corpus_texts, run_tool, sp_encode, write_jsonl

    texts = corpus_texts(20)
    write_jsonl(tmp_path / "in.jsonl", texts)
    assert (
        run_tool("--input", tmp_path / "in.jsonl", "--output-prefix", tmp_path / "t", "--seq-length", 128)
        == 0
    )
    dataset = AnchorPackedDataset(str(tmp_path / "t_text_document"), seq_length=128)
    ids = [t for doc in sp_encode(texts) for t in doc]
    assert all(item["tokens"][0] == 1 for item in dataset)
    # The labels of a sample are its S document tokens; those of the padding are masked out.
    labels = np.concatenate([item["labels"][item["loss_mask"] > 0].numpy() for item in dataset])
    assert labels.tolist() == ids
