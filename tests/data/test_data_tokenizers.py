"""build_tokenizer / train_sentencepiece against the tokenizer libraries themselves."""

from __future__ import annotations

import gzip
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from anchor_data_helpers import corpus_texts, hf_tokenizer_dir, sp_model

from megatron_anchor.data import build_tokenizer, default_anchor_id
from megatron_anchor.data.indexed_writer import token_dtype
from tests.disk_limits import file_size_limit
from tools import train_tokenizer


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


def _identity(path) -> dict:
    from megatron_anchor.data.tokenizers import tokenizer_identity

    kind = "HuggingFaceTokenizer" if Path(path).is_dir() else "SentencePieceTokenizer"
    return tokenizer_identity(kind, str(path), 300)


def test_data_of_a_tokenizer_file_is_the_data_of_its_hugging_face_directory(tmp_path):
    """A SentencePiece model given as the file or inside a Hugging Face directory is one tokenizer; another
    model file in the directory is not."""
    import shutil

    from megatron_anchor.data.data_record import check_data_tokenizer, record_path, write_record

    hf, other = tmp_path / "hf", tmp_path / "other"
    (tmp_path / "b.model").write_bytes(Path(sp_model()).read_bytes() + b"\0")
    for directory, model in ((hf, sp_model()), (other, tmp_path / "b.model")):
        directory.mkdir()
        shutil.copy(model, directory / "tokenizer.model")
        (directory / "tokenizer_config.json").write_text("{}")
    prefix = str(tmp_path / "d")
    pair = {suffix: prefix + suffix for suffix in (".bin", ".idx")}
    for path in pair.values():
        Path(path).write_bytes(b"\1" * 64)
    for recorded, training in [(sp_model(), hf), (hf, sp_model())]:
        write_record(record_path(prefix), {"tokenizer": _identity(recorded)}, "run", pair)
        assert check_data_tokenizer(prefix, _identity(training), 300) is None
    with pytest.raises(ValueError, match="was preprocessed with HuggingFaceTokenizer .*not the training"):
        check_data_tokenizer(prefix, _identity(other), 300)


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


def test_train_tokenizer_reads_gzip_as_preprocessing_does(tmp_path, capsys):
    """A .jsonl.gz (and a gzip file without the suffix: known by its bytes) trains the same model."""
    from anchor_data_helpers import write_jsonl

    write_jsonl(tmp_path / "c.jsonl", corpus_texts(60))
    (tmp_path / "c.data").write_bytes(gzip.compress((tmp_path / "c.jsonl").read_bytes()))
    pieces = []
    for name, source in (("plain", "c.jsonl"), ("gz", "c.data")):
        args = ["--input", str(tmp_path / source), "--model-prefix", str(tmp_path / name)]
        assert train_tokenizer.main([*args, "--vocab-size", "300"]) == 0
        model = build_tokenizer("SentencePieceTokenizer", str(tmp_path / f"{name}.model"))
        pieces.append([model.decode([i]) for i in range(model.vocab_size)])
    assert pieces[0] == pieces[1] and len(pieces[0]) > 100
    assert capsys.readouterr().err == ""


def test_train_tokenizer_errors_are_one_line(tmp_path, capsys):
    """A missing input, --vocab-size 0 or too small, an empty input, an unwritable output: one line each."""
    from anchor_data_helpers import read_only, write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_texts(20))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    ro = tmp_path / "ro"
    ro.mkdir()
    prefix, missing = ["--model-prefix", str(tmp_path / "tok")], str(tmp_path / "missing.jsonl")
    cases = [
        (["--input", missing, *prefix], f"--input '{missing}': no such file"),
        (["--input", str(corpus), *prefix, "--vocab-size", "0"], "--vocab-size 0: must be positive"),
        (["--input", str(corpus), *prefix, "--vocab-size", "5"], "--vocab-size 5 is smaller than the "),
        (["--input", str(tmp_path / "empty.jsonl"), *prefix], "no text under key 'text' to train on"),
        (["--input", str(corpus), "--model-prefix", str(ro / "t")], f"--model-prefix {ro}: {ro} is not writ"),
        (["--input", str(corpus), "--model-prefix", str(ro / "new" / "t")], f"{ro} is not writable"),
        (["--input", str(tmp_path / "empty.jsonl"), "--model-prefix", str(tmp_path / "n" / "t")], "no text"),
    ]
    with read_only(tmp_path / "ro"):
        for argv, expected in cases:
            assert train_tokenizer.main(argv) == 1, argv
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert not list(tmp_path.glob("tok*")) and not list((tmp_path / "ro").iterdir())
    assert not (tmp_path / "n").exists()  # the checks create nothing


def test_train_tokenizer_on_a_full_disk_fails_in_one_line_and_leaves_no_model(tmp_path):
    """The output passes the start-up probe, then the model does not fit (a file size limit, as a full disk
    or a quota): one line with the errno, exit 1, and no PREFIX.model or PREFIX.vocab (sentencepiece's own
    writer left a truncated model and exit 0)."""
    from anchor_data_helpers import write_jsonl

    corpus = write_jsonl(tmp_path / "c.jsonl", corpus_texts(60))
    prefix = tmp_path / "tok"
    tool = Path(train_tokenizer.__file__)
    argv = [sys.executable, str(tool), "--input", str(corpus), "--model-prefix", str(prefix)]
    limit = file_size_limit(8192)
    proc = subprocess.run([*argv, "--vocab-size", "300"], capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)  # fmt: skip
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: writing {prefix}.model failed: [Errno 27 EFBIG] File too large: ")
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl"]


def test_help_keeps_the_examples_line_breaks(capsys):
    """The example commands in --help are the module docstring's lines, backslash continuations included."""
    from anchor_data_helpers import tool

    for module, continued in (
        (tool(), "--output-prefix data/corpus \\\n        --tokenizer-type SentencePieceTokenizer"),
        (train_tokenizer, "--model-prefix runs/tok \\\n        --vocab-size 2000"),
    ):
        with pytest.raises(SystemExit):
            module.parse_args(["--help"])
        assert continued in capsys.readouterr().out
