"""Corpus -> SentencePiece -> tools/preprocess_data.py -> torchrun CP=2 training: the loss falls."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from train_harness import MODEL, REPO, run_pretrain, step_losses

from megatron_anchor.data import train_sentencepiece
from megatron_anchor.training import build_parser, validate_args
from megatron_anchor.training.build import build_datasets


@pytest.fixture(scope="module")
def packed_corpus(tmp_path_factory):
    """The bundled corpus' first 150 records, a 512-piece tokenizer, samples of S + 1 = 129 tokens."""
    work = tmp_path_factory.mktemp("e2e")
    lines = (REPO / "examples" / "data" / "sample_corpus.jsonl").read_text().splitlines()[:150]
    corpus = work / "corpus.jsonl"
    corpus.write_text("\n".join(lines) + "\n")
    texts = [json.loads(line)["text"] for line in lines]
    tokenizer = train_sentencepiece(texts, str(work / "tok"), vocab_size=512)
    subprocess.run(
        [
            sys.executable,
            "tools/preprocess_data.py",
            "--input",
            str(corpus),
            "--output-prefix",
            str(work / "c"),
            "--tokenizer-type",
            "SentencePieceTokenizer",
            "--tokenizer-model",
            tokenizer,
            "--seq-length",
            "128",
            "--pack",
            "greedy",
            "--workers",
            "1",
            "--no-progress",
        ],
        cwd=REPO,
        check=True,
        capture_output=True,
        timeout=120,
    )
    data = [
        "--data-path",
        str(work / "c_text_document"),
        "--tokenizer-type",
        "SentencePieceTokenizer",
        "--tokenizer-model",
        tokenizer,
        "--split",
        "90,10,0",
    ]
    return work, data


def test_packed_corpus_trains_with_context_parallel_2(packed_corpus, tmp_path):
    _, data = packed_corpus
    flags = [
        *MODEL,
        *data,
        "--seq-length",
        "128",
        "--context-parallel-size",
        "2",
        "--micro-batch-size",
        "2",
        "--global-batch-size",
        "4",
        "--train-iters",
        "30",
        "--lr",
        "3e-3",
        "--lr-warmup-iters",
        "3",
        "--log-interval",
        "1",
        "--eval-interval",
        "15",
        "--eval-iters",
        "2",
    ]
    records, _ = run_pretrain(2, flags, tmp_path, timeout=300)
    losses = step_losses(records)
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (28, 29, 30)) / 3
    assert first > 5.5 and last < first - 1.5, (first, last)  # starts near ln(512) = 6.2
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0]
    for key in ("lr", "grad_norm", "tokens_per_s", "tflops_per_gpu", "mfu", "mem_gib"):
        assert key in records[0]


def test_dataset_of_another_sample_length_is_refused(packed_corpus):
    _, data = packed_corpus
    args = validate_args(
        build_parser().parse_args([*MODEL, *data, "--seq-length", "64", "--train-iters", "2"]), 1
    )
    with pytest.raises(ValueError, match="seq_length 64 needs 65"):
        build_datasets(args, 512)
