"""Hand-built inputs for flag and dry-run tests: a packed anchor dataset, a plain Megatron-LM one and a tiny
Hugging Face tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_anchor.data.indexed_writer import IndexedWriter


def write_packed(prefix: Path, seq_length: int, samples: int, vocab: int = 100, docs: int = 3) -> str:
    """``samples`` packed samples of ``seq_length + 1`` tokens: the anchor (id 0), then ``docs`` documents."""
    rng = np.random.default_rng(0)
    writer = IndexedWriter(str(prefix), np.int32)
    body = seq_length // docs
    lengths = [1, *[body] * (docs - 1), seq_length - body * (docs - 1)]
    for _ in range(samples):
        tokens = np.concatenate([[0], rng.integers(1, vocab, seq_length)]).astype(np.int32)
        writer.add_document(tokens, lengths)
    writer.commit()
    return str(prefix)


def write_plain(prefix: Path, docs: list[np.ndarray]) -> str:
    """Megatron-LM's plain format (one document a sequence), written by megatron-core's own builder."""
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

    builder = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    for doc in docs:
        builder.add_document(doc, [len(doc)])
    builder.finalize(f"{prefix}.idx")
    return str(prefix)


def write_hf_tokenizer(directory: Path, vocab: int = 64, bos_eos: bool = True) -> str:
    """A word-level Hugging Face tokenizer of ``vocab`` ids (``<s>`` 0, ``</s>`` 1, ``<unk>`` 2, ...); without
    ``bos_eos`` neither ``<s>`` nor ``</s>`` is its BOS or EOS."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<s>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"bos_token": "<s>", "eos_token": "</s>"} if bos_eos else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", **specials)
    fast.save_pretrained(directory)
    return str(directory)
