"""Offline punkt: parameters trained on the input, newline keeping, and input discovery."""

from __future__ import annotations

import random

import pytest

from megatron_anchor.data.jsonl import find_input_files
from megatron_anchor.data.sentences import build_sentence_splitter, train_punkt_params


def test_trained_punkt_learns_abbreviations():
    rng = random.Random(0)
    names = ["Smith", "Jones", "Brown", "Lee", "Khan"]
    texts = [
        " ".join(f"Dr. {rng.choice(names)} met the mayor at noon. The council voted." for _ in range(20))
        for _ in range(20)
    ]
    params = train_punkt_params(texts)
    assert "dr" in params.abbrev_types
    text = "Dr. Smith met the mayor.\n\nHe left."
    assert build_sentence_splitter(params).tokenize(text) == ["Dr. Smith met the mayor.", "He left."]
    kept = build_sentence_splitter(params, keep_newlines=True).tokenize(text)
    assert kept == ["Dr. Smith met the mayor.\n\n", "He left."]


def test_find_input_files(tmp_path):
    for name in ("b.jsonl", "a.jsonl.gz", "notes.txt"):
        (tmp_path / name).write_text("")
    assert find_input_files(str(tmp_path)) == [str(tmp_path / "a.jsonl.gz"), str(tmp_path / "b.jsonl")]
    assert find_input_files(str(tmp_path / "*.jsonl")) == [str(tmp_path / "b.jsonl")]
    with pytest.raises(FileNotFoundError, match="--input"):
        find_input_files(str(tmp_path / "missing*.jsonl"))


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 10_000])
def test_chunks_are_whole_lines_in_order(tmp_path, chunk_bytes):
    import gzip

    from megatron_anchor.data.jsonl import read_chunks

    data = b'{"a": 1}\n\n{"text": "carriage\rreturn"}\r\n' + b"x" * 50 + b"\nlast line without newline"
    (tmp_path / "in.jsonl").write_bytes(data)
    with gzip.open(tmp_path / "in.jsonl.gz", "wb") as stream:
        stream.write(data)
    with open(tmp_path / "in.jsonl", "rb") as stream:
        expected = stream.readlines()
    for name in ("in.jsonl", "in.jsonl.gz"):
        chunks = list(read_chunks([str(tmp_path / name)], chunk_bytes))
        assert [line for chunk in chunks for line in chunk.read_lines()] == expected
        assert all(chunk.read_lines() for chunk in chunks)
