"""Training on Megatron-LM's plain format read as it is equals training on the greedy-packed file of the same
corpus; token ids outside the model's vocabulary stop a run with one line naming the file and the sample."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from train_harness import MODEL, REPO, run_pretrain, step_losses

from megatron_anchor.data import PreprocessConfig, build_tokenizer, run_preprocess, train_sentencepiece
from megatron_anchor.data.indexed_writer import IndexedWriter

SIX_STEPS = [
    *"--seq-length 64 --micro-batch-size 2 --global-batch-size 4 --train-iters 6".split(),
    *"--lr 2e-3 --lr-warmup-iters 2 --log-interval 1 --seed 7 --split 100,0,0".split(),
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bundled corpus' first 60 records, preprocessed twice with --append-eod: plain (Megatron-LM's
    format) and greedy-packed at S = 64."""
    work = tmp_path_factory.mktemp("layouts")
    lines = (REPO / "examples" / "data" / "sample_corpus.jsonl").read_text().splitlines()[:60]
    (work / "c.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = train_sentencepiece([json.loads(line)["text"] for line in lines], str(work / "tok"), 256)
    for name, seq_length in (("plain", None), ("packed", 64)):
        config = PreprocessConfig(
            str(work / "c.jsonl"), str(work / name), "SentencePieceTokenizer", tokenizer, append_eod=True,
            seq_length=seq_length, progress=False,
        )  # fmt: skip
        run_preprocess(config)
    return work, ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer]


def test_plain_and_packed_files_of_one_corpus_train_to_the_same_losses(corpus, tmp_path):
    work, tokenizer = corpus
    runs = {}
    for name in ("plain", "packed"):
        flags = [*MODEL, *SIX_STEPS, *tokenizer, "--data-path", str(work / f"{name}_text_document")]
        flags.append("--no-data-shuffle")  # file order: sample k of both files is the same
        records, proc = run_pretrain(1, flags, tmp_path / name)
        runs[name] = step_losses(records)
        layout = "Megatron-LM plain documents" if name == "plain" else "packed-anchor samples"
        assert f"note: data {work}/{name}_text_document: {layout}" in proc.stdout
    assert sorted(runs["plain"]) == list(range(1, 7))
    assert runs["plain"] == runs["packed"]  # the same samples in the same order: bit for bit


def wide_samples(prefix: Path, bad: range) -> str:
    """8 packed samples of S = 64 with ids below 256, but the ``bad`` ones hold id 300 at position 10."""
    writer = IndexedWriter(str(prefix), np.int32)
    rng = np.random.default_rng(0)
    for k in range(8):
        tokens = np.concatenate([[0], rng.integers(1, 256, 64)])
        tokens[10] = 300 if k in bad else tokens[10]
        writer.add_document(tokens, [1, 30, 34])
    writer.commit()
    return str(prefix)


def test_token_ids_outside_the_vocabulary_stop_a_tp2_run(tmp_path):
    """At TP = 2 megatron-core's vocabulary-parallel embedding zeroed such ids and the run trained on, exit 0;
    now the first sample read stops every rank before any forward, naming the file and the sample."""
    prefix = wide_samples(tmp_path / "wide_text_document", range(8))
    flags = [*MODEL, *SIX_STEPS, "--vocab-size", "256", "--data-path", prefix]
    records, proc = run_pretrain(2, [*flags, "--tensor-model-parallel-size", "2"], tmp_path, expect_fail=True)
    assert step_losses(records) == {}
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: rank")]
    # Both TP ranks read the sample; the first to stop may end the job before the other one prints.
    assert errors and {line[: len("error: rank 0")] for line in errors} <= {"error: rank 0", "error: rank 1"}
    one_line = (
        rf"error: rank [01]: {prefix}\.bin: sample [0-7] holds token id 300, outside the model's vocabulary "
        r"of 256 ids: data of another tokenizer\? \(compare the data's preprocessing with --tokenizer-model "
        r"/ --vocab-size\)"
    )
    assert all(re.fullmatch(one_line, line) for line in errors), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr.split(errors[0])[0][-2000:]


def _args(extra: list[str]):
    from megatron_anchor.training import build_parser, validate_args

    tiny = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --train-iters 2"
    return validate_args(build_parser().parse_args([*tiny.split(), *extra]), 1)


def test_token_ids_outside_the_vocabulary_are_refused_on_the_host_at_tp1(tmp_path):
    """At TP = 1 the embedding raised a bare IndexError on the device; now the batch never gets there."""
    from megatron_anchor.training.batches import CPSlicing, micro_batches
    from megatron_anchor.training.build import build_datasets

    prefix = wide_samples(tmp_path / "wide_text_document", range(5, 6))
    flags = ["--data-path", prefix, "--split", "1,0,0"]
    with pytest.raises(ValueError, match=rf"^{prefix}\.bin: sample 5 holds token id 300, outside the model"):
        data = build_datasets(_args([*flags, "--vocab-size", "256"]), 256)
        micro_batches(data.train, list(range(8)), 2, CPSlicing(), "cpu")  # every sample, shuffled
    fits = build_datasets(_args([*flags, "--vocab-size", "301"]), 320)
    assert len(micro_batches(fits.train, list(range(8)), 2, CPSlicing(), "cpu")) == 4


def test_the_data_tokenizer_is_checked_at_start_up(corpus, tmp_path):
    """Data preprocessed with another tokenizer is refused naming both; data without a record is noted."""
    from megatron_anchor.training.preflight import preflight

    work, tokenizer = corpus
    other = train_sentencepiece([f"word{i} other{i % 7} text" for i in range(300)], str(tmp_path / "b"), 100)
    plain = str(work / "plain_text_document")
    same = preflight(_args([*tokenizer, "--data-path", plain, "--data-cache-path", str(tmp_path)]), True)
    assert same.errors == [] and same.notes[0].startswith(f"data {plain}: Megatron-LM plain documents (60 ")
    flags = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", other, "--data-path", plain]
    found = preflight(_args([*flags, "--data-cache-path", str(tmp_path)]), True)
    assert len(found.errors) == 1 and "\n" not in found.errors[0]
    assert found.errors[0].startswith(f"--data-path {plain} was preprocessed with SentencePieceTokenizer ")
    size = build_tokenizer("SentencePieceTokenizer", other).vocab_size
    assert f"{tokenizer[-1]} (256 ids, CRC-32 " in found.errors[0]
    training = f"not the training --tokenizer-model SentencePieceTokenizer {other} ({size} ids, CRC-32 "
    assert training in found.errors[0]
    megatron_copy = tmp_path / "m_text_document"
    for suffix in (".bin", ".idx"):  # the same files without the record: as Megatron-LM writes them
        shutil.copy(f"{plain}{suffix}", f"{megatron_copy}{suffix}")
    bare = preflight(_args([*tokenizer, "--data-path", str(megatron_copy)]), True)
    assert bare.errors == [] and bare.notes[1] == (
        f"--data-path {megatron_copy}: no tokenizer recorded beside it (in {megatron_copy}.meta.json; "
        "Megatron-LM's own preprocessing writes none): its token ids are checked against the vocabulary of "
        "256 sample by sample, its tokenizer cannot be"
    )


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--split", "0,0,100"], "--split 0,0,100 leaves nothing to train on: its first (train) part must"),
        (["--split", "abc"], "--split abc: expected up to three comma-separated non-negative numbers"),
        (["--split", "90,-10,20"], "--split 90,-10,20: expected up to three comma-separated non-negative"),
        (["--data-path", "-0.5", "A", "1.5", "B"], "--data-path: weight -0.5 of A must be a positive number"),
        (["--data-path", "0.5", "A", "nan", "B"], "--data-path: weight nan of B must be a positive number"),
        (["--data-path", "0.5", "A", "B", "C"], "--data-path: 'B' stands where the weight of C is expected"),
        (["--data-path", "0.5", "A", "0.5"], "--data-path 0.5 A 0.5: weights and prefixes must come in"),
    ],
)
def test_split_and_blend_weights_are_one_line_errors(flags, message):
    """megatron-core turned these into a TypeError, a NaN ValueError and an AssertionError mid-run."""
    flags = flags if "--data-path" in flags else [*flags, "--data-path", "A"]
    with pytest.raises(ValueError) as error:
        _args(["--vocab-size", "100", *flags])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_split_with_the_quotes_of_megatrons_example_scripts_is_read_as_megatron_core_reads_it():
    """Megatron-LM's scripts pass ``--split '99,1,0'`` through an unquoted array, quotes and all."""
    assert _args(["--vocab-size", "100", "--split", "'99,1,0'", "--data-path", "A"]).split == "'99,1,0'"
    from megatron.core.datasets.blended_megatron_dataset_config import parse_and_normalize_split

    assert parse_and_normalize_split("'99,1,0'") == parse_and_normalize_split("99,1,0")
