"""build_tokenizer / train_sentencepiece against the tokenizer libraries themselves."""

from __future__ import annotations

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
    with pytest.raises(ValueError, match="--tokenizer-type 'GPT2BPETokenizer'"):
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
