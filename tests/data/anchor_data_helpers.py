"""Shared helpers of the data tests: a tiny corpus, a SentencePiece model trained on it, the tool's entry."""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "examples" / "data" / "sample_corpus.jsonl"


@functools.cache
def corpus_texts(n: int = 120) -> tuple[str, ...]:
    """The first ``n`` texts of the bundled corpus."""
    with open(CORPUS, encoding="utf-8") as stream:
        return tuple(json.loads(line)["text"] for _, line in zip(range(n), stream))


@functools.cache
def sp_model() -> str:
    """A SentencePiece model trained offline on the bundled corpus (once per test session)."""
    from megatron_anchor.data import train_sentencepiece

    directory = tempfile.mkdtemp(prefix="anchor_sp_")
    return train_sentencepiece(corpus_texts(300), os.path.join(directory, "tok"), 600)


def write_jsonl(path: Path, texts, key: str = "text") -> Path:
    """A jsonl file with one ``{key: text}`` record per text."""
    with open(path, "w", encoding="utf-8") as stream:
        for text in texts:
            stream.write(json.dumps({key: text}) + "\n")
    return path


@functools.cache
def tool():
    """``tools/preprocess_data.py`` as a module."""
    spec = importlib.util.spec_from_file_location(
        "preprocess_data_tool", REPO / "tools" / "preprocess_data.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(*args: str) -> int:
    """Run the tool in-process with the session's SentencePiece model."""
    base = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model(), "--no-progress"]
    return tool().main([*base, *map(str, args)])


def sp_encode(texts) -> list[list[int]]:
    """Independent tokenization with sentencepiece itself."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=sp_model())
    return [processor.encode(text) for text in texts]


def read_documents(prefix: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every index document as (tokens, sequence lengths), read by megatron-core's IndexedDataset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.datasets.indexed_dataset import IndexedDataset

    dataset = IndexedDataset(prefix)
    docs = []
    for first, end in zip(dataset.document_indices[:-1], dataset.document_indices[1:]):
        sequences = [dataset[int(i)] for i in range(first, end)]
        docs.append((np.concatenate(sequences), np.array([len(s) for s in sequences])))
    return docs


def hf_tokenizer_dir(directory: Path, vocab_size: int, with_bos: bool):
    """A local Hugging Face tokenizer directory (byte-level BPE trained offline); returns its backend."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>"] if with_bos else ["<unk>", "</s>"]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(corpus_texts(100), trainer)
    bos = {"bos_token": "<s>"} if with_bos else {}
    PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", **bos
    ).save_pretrained(directory)
    return backend


def tool_command(*args) -> list[str]:
    """The command line of the tool in a fresh interpreter, with the session's SentencePiece model."""
    import sys

    tokenizer = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp_model()]
    return [
        sys.executable,
        str(REPO / "tools" / "preprocess_data.py"),
        *tokenizer,
        "--no-progress",
        *map(str, args),
    ]


def big_corpus(path: Path, repeats: int = 12) -> Path:
    """A ~20 MB jsonl file: enough work that a run can be stopped or killed while it writes."""
    lines = [json.dumps({"text": t}) + "\n" for t in corpus_texts(1200)]
    path.write_text("".join(lines) * repeats, encoding="utf-8")
    return path


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from ``/proc``)."""
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="utf-8") as stream:
                    fields = stream.read().rsplit(")", 1)[1].split()  # after "(command)": state, ppid, ...
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry))
    return children


def wait_for(condition, what: str, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@contextlib.contextmanager
def read_only(directory):
    """``directory`` made unwritable: mode 555, and immutable when root (root ignores the mode)."""
    directory.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable and subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode:
        directory.chmod(0o755)
        pytest.skip("root ignores permissions and chattr +i is not available here")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
        directory.chmod(0o755)
