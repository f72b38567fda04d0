"""build_tokenizer / train_sentencepiece against the tokenizer libraries themselves."""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle

import numpy as np
import pytest
from anchor_data_helpers import corpus_texts, hf_tokenizer_dir, sp_model

from megatron_anchor.data import build_tokenizer, default_anchor_id
from megatron_anchor.data.indexed_writer import token_dtype


def test_sentencepiece():
    import sentencepiece

    reference = sentencepiece.SentencePieceProcessor(model_file=sp_model())
    tokenizer = build_tokenizer("SentencePieceTokenizer", sp_model())
    texts = list(corpus_texts(5))
    assert tokenizer.encode(texts[0]) == reference.encode(texts[0])
    assert tokenizer.encode_batch(texts) == [reference.encode(t) for t in texts]
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, None)
    assert tokenizer.vocab_size == reference.get_piece_size() and default_anchor_id(tokenizer) == 1
    assert pickle.loads(pickle.dumps(tokenizer)).encode(texts[1]) == reference.encode(texts[1])


def test_huggingface(tmp_path):
    backend = hf_tokenizer_dir(tmp_path, 400, with_bos=False)
    tokenizer = build_tokenizer("HuggingFaceTokenizer", str(tmp_path))
    texts = list(corpus_texts(3))
    assert tokenizer.encode_batch(texts) == [backend.encode(t).ids for t in texts]
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.vocab_size) == (None, 1, 400)
    assert default_anchor_id(tokenizer) == 1  # no BOS: the anchor is EOS


def test_errors_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--tokenizer-type GPT2BPETokenizer needs --merge-file"):
        build_tokenizer("GPT2BPETokenizer", "x")
    with pytest.raises(FileNotFoundError, match="--tokenizer-model"):
        build_tokenizer("SentencePieceTokenizer", str(tmp_path / "missing.model"))


@pytest.mark.parametrize("vocab", [100, 65499, 65500, 200_000])
def test_token_dtype_is_megatrons(vocab):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import DType

    assert token_dtype(vocab) is DType.optimal_dtype(vocab)
    assert np.iinfo(token_dtype(vocab)).max >= vocab - 1


def test_train_tokenizer_tool(tmp_path):
    import subprocess
    import sys

    from anchor_data_helpers import CORPUS, REPO

    tool = REPO / "tools" / "train_tokenizer.py"
    prefix = str(tmp_path / "q")
    subprocess.run(
        [sys.executable, str(tool), "--input", str(CORPUS), "--model-prefix", prefix, "--vocab-size", "500"],
        check=True,
    )
    tokenizer = build_tokenizer("SentencePieceTokenizer", prefix + ".model")
    assert 100 < tokenizer.vocab_size <= 500 and tokenizer.bos_id == 1

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    result = subprocess.run(
        [sys.executable, str(tool), "--input", str(bad), "--model-prefix", prefix],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and f"{bad}:2" in result.stderr


@functools.cache
def tokenizer_tool():
    """``tools/train_tokenizer.py`` as a module."""
    from anchor_data_helpers import REPO

    path = REPO / "tools" / "train_tokenizer.py"
    spec = importlib.util.spec_from_file_location("train_tokenizer_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_tokenizer_reads_gzip_as_preprocessing_does(tmp_path, capsys):
    """A .jsonl.gz (and a gzip file without the suffix: known by its bytes) trains the same model."""
    from anchor_data_helpers import write_jsonl

    write_jsonl(tmp_path / "c.jsonl", corpus_texts(60))
    (tmp_path / "c.data").write_bytes(gzip.compress((tmp_path / "c.jsonl").read_bytes()))
    pieces = []
    for name, source in (("plain", "c.jsonl"), ("gz", "c.data")):
        args = ["--input", str(tmp_path / source), "--model-prefix", str(tmp_path / name)]
        assert tokenizer_tool().main([*args, "--vocab-size", "300"]) == 0
        model = build_tokenizer("SentencePieceTokenizer", str(tmp_path / f"{name}.model"))
        pieces.append([model.decode([i]) for i in range(model.vocab_size)])
    assert pieces[0] == pieces[1] and len(pieces[0]) > 100
    assert capsys.readouterr().err == ""


def test_train_tokenizer_errors_are_one_line(tmp_path, capsys):
    """A missing input, --vocab-size 0 or too small, an empty input, an unwritable output: one line each."""
    from anchor_data_helpers import read_only, write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_texts(20))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    (tmp_path / "ro").mkdir()
    prefix, missing = ["--model-prefix", str(tmp_path / "tok")], str(tmp_path / "missing.jsonl")
    cases = [
        (["--input", missing, *prefix], f"--input '{missing}': no such file"),
        (["--input", str(corpus), *prefix, "--vocab-size", "0"], "--vocab-size 0: must be positive"),
        (["--input", str(corpus), *prefix, "--vocab-size", "5"], "--vocab-size 5 is smaller than the "),
        (["--input", str(tmp_path / "empty.jsonl"), *prefix], "no text under key 'text' to train on"),
        (["--input", str(corpus), "--model-prefix", str(tmp_path / "ro" / "t")], f"{tmp_path}/ro/t: cannot"),
    ]
    with read_only(tmp_path / "ro"):
        for argv, expected in cases:
            assert tokenizer_tool().main(argv) == 1, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not list(tmp_path.glob("tok*")) and not list((tmp_path / "ro").iterdir())


def test_help_keeps_the_examples_line_breaks(capsys):
    """The example commands in --help are the module docstring's lines, backslash continuations included."""
    from anchor_data_helpers import tool

    for module, continued in (
        (tool(), "--output-prefix data/corpus \\\n        --tokenizer-type SentencePieceTokenizer"),
        (tokenizer_tool(), "--model-prefix runs/tok \\\n        --vocab-size 2000"),
    ):
        with pytest.raises(SystemExit):
            module.parse_args(["--help"])
        assert continued in capsys.readouterr().out
