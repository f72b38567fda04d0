"""Megatron-LM's plain datasets read as they are: megatron-core's GPTDataset sampling with the anchor in
front, document boundaries from the index and from EOD, the same samples as greedy packing of the corpus."""

from __future__ import annotations

import json
import warnings
import zlib

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
    from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder
    from megatron.core.datasets.utils import get_blend_from_list

from megatron_anchor.data import AnchorTokens, build_train_valid_test_datasets, prefix_layout

ANCHOR, EOD = 1, 2


def megatron_file(prefix: str, documents: list[list[list[int]]]) -> str:
    """A plain file written by megatron-core's own builder: one index document per entry of ``documents``,
    each a list of sequences (sentences)."""
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16)
    for sequences in documents:
        builder.add_document(np.concatenate(sequences), [len(s) for s in sequences])
    builder.finalize(prefix + ".idx")
    return prefix


def test_boundaries_come_from_the_index_and_from_eod(tmp_path):
    """Hand-built: a document cut by the previous sample is a new one, two sentences of one document are
    one, an entry holding two EOD-ended documents is two."""
    prefix = megatron_file(
        str(tmp_path / "m"),
        [
            [[10, 11, 12, 13, EOD]],
            [[20, 21, 22], [23, 24, 25, EOD]],  # two sentences of one document
            [[30, 31, EOD, 40, 41, EOD]],  # two documents in one entry
            [list(range(50, 60))],
        ],
    )
    assert prefix_layout(prefix) == "plain"
    tokens = AnchorTokens(ANCHOR, EOD)
    train = build_train_valid_test_datasets(
        [prefix], "1,0,0", 6, 3, (4, 0, 0), tokens=tokens, shuffle=False, path_to_cache=str(tmp_path)
    )[0]
    # 28 tokens: 4 samples of 6 (the last 4 tokens do not fill one and are dropped, as megatron-core does)
    want = [
        ([10, 11, 12, 13, EOD, 20], [0, 1, 1, 1, 1, 1, 2]),
        ([21, 22, 23, 24, 25, EOD], [0, 1, 1, 1, 1, 1, 1]),
        ([30, 31, EOD, 40, 41, EOD], [0, 1, 1, 1, 2, 2, 2]),
        ([50, 51, 52, 53, 54, 55], [0, 1, 1, 1, 1, 1, 1]),
    ]
    assert len(train) == 4
    for item, (labels, doc) in zip(train, want):
        assert item["tokens"].tolist() == [ANCHOR, *labels[:-1]]
        assert item["labels"].tolist() == labels
        assert item["doc_ids"].tolist() == doc[:-1]
        assert item["loss_mask"].tolist() == [1.0] * 6
    masked = build_train_valid_test_datasets(
        [prefix], "1,0,0", 6, 3, (4, 0, 0), position_ids="reset", mask_cross_doc_labels=True,
        tokens=tokens, shuffle=False, path_to_cache=str(tmp_path),
    )[0]  # fmt: skip
    assert masked[2]["position_ids"].tolist() == [0, 1, 2, 3, 1, 2]
    assert masked[2]["loss_mask"].tolist() == [1, 1, 1, 0, 1, 1]  # label 40 starts the next document


def test_samples_are_megatron_cores_gpt_samples_with_the_anchor_in_front(tmp_path):
    """Shuffled, several epochs, a train/valid split: each sample's labels are exactly the tokens of
    megatron-core's own GPTDataset sample (same seed, a sample of S tokens without the extra one), and its
    inputs are the anchor and those tokens but the last."""
    rng = np.random.default_rng(0)
    documents = [[[*rng.integers(3, 900, rng.integers(5, 90)), EOD]] for _ in range(60)]
    prefix = megatron_file(str(tmp_path / "m"), documents)
    seq, seed, sizes = 32, 41, (200, 20, 0)  # more samples than one epoch holds
    tokens = AnchorTokens(ANCHOR, EOD)
    ours = build_train_valid_test_datasets(
        [prefix], "90,10,0", seq, seed, sizes, tokens=tokens, path_to_cache=str(tmp_path / "a")
    )
    config = GPTDatasetConfig(
        random_seed=seed,
        sequence_length=seq,
        blend=get_blend_from_list([prefix]),
        split="90,10,0",
        path_to_cache=str(tmp_path / "b"),
        tokenizer=tokens,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        add_extra_token_to_sequence=False,
    )
    theirs = BlendedMegatronDatasetBuilder(GPTDataset, list(sizes), lambda: True, config).build()
    for mine, reference in zip(ours[:2], theirs[:2]):
        assert len(mine) == len(reference) >= 20
        for k in range(len(reference)):
            want = reference[k]["tokens"]
            assert mine[k]["labels"].tolist() == want.tolist()
            assert mine[k]["tokens"].tolist() == [ANCHOR, *want[:-1].tolist()]
    in_file_order = np.concatenate([d[0] for d in documents])[:seq]
    assert ours[0][0]["labels"].tolist() != in_file_order.tolist()  # shuffled, as megatron-core shuffles


def test_the_same_corpus_plain_and_greedy_packed_gives_the_same_samples(tmp_path):
    """The tool's plain output (byte-identical to Megatron-LM's with --append-eod) read on the fly, against
    its greedy-packed output: the same tokens, labels and document boundaries, sample by sample."""
    from anchor_data_helpers import corpus_texts, run_tool, sp_model, write_jsonl

    write_jsonl(tmp_path / "c.jsonl", corpus_texts(30))
    common = ("--input", tmp_path / "c.jsonl", "--append-eod")
    assert run_tool(*common, "--output-prefix", tmp_path / "plain") == 0
    assert run_tool(*common, "--output-prefix", tmp_path / "packed", "--seq-length", 64) == 0
    plain, packed = (str(tmp_path / f"{name}_text_document") for name in ("plain", "packed"))
    assert (prefix_layout(plain), prefix_layout(packed)) == ("plain", "packed")
    records = [json.loads(open(f"{p}.meta.json").read()) for p in (plain, packed)]  # the record, by hand
    crc = f"{zlib.crc32(open(sp_model(), 'rb').read()):08x}"
    tokenizer = {"type": "SentencePieceTokenizer", "model": sp_model(), "vocab_size": 600, "crc32": crc}
    assert records[0]["tokenizer"] == records[1]["tokenizer"] == tokenizer
    assert records[1]["run_id"] != records[0]["run_id"]
    assert (records[0]["append_eod"], records[0]["eod_id"]) == (True, EOD)
    packing = [records[1][k] for k in ("layout", "seq_length", "pack", "anchor_id")]
    assert packing == ["packed", 64, "greedy", ANCHOR]
    tokens = AnchorTokens(ANCHOR, EOD)  # the bundled tokenizer's BOS and EOS
    a, b = (
        build_train_valid_test_datasets(
            [p], "1,0,0", 64, 1, (10, 0, 0), tokens=tokens, shuffle=False, path_to_cache=str(tmp_path)
        )[0]
        for p in (plain, packed)
    )
    assert len(a) == len(b) - 1 > 300  # the packed file keeps its final partial sample (padded)
    for k in range(len(a)):
        x, y = a[k], b[k]
        assert all(x[key].tolist() == y[key].tolist() for key in x), k
    mixed = ["0.5", plain, "0.5", packed]  # one blend of both layouts
    blend = build_train_valid_test_datasets(mixed, "1,0,0", 64, 1, (40, 0, 0), tokens=tokens)[0]
    assert {int(blend[k]["dataset_id"]) for k in range(len(blend))} == {0, 1}


def test_a_plain_file_needs_the_anchor_of_a_tokenizer(tmp_path):
    prefix = megatron_file(str(tmp_path / "m"), [[[5, 6, 7, EOD]]] * 20)
    with pytest.raises(ValueError, match=r"m: a Megatron-LM plain dataset, .* give --tokenizer-type"):
        build_train_valid_test_datasets([prefix], "1,0,0", 8, 1, (2, 0, 0))
