"""Worker side of preprocessing: a chunk of jsonl lines in, token arrays per json key out.

Runs in pool processes, so it imports only numpy, json and the tokenizer's own library (no torch, no
megatron-core). A chunk is encoded with one batched tokenizer call per key and returned as flat numpy
arrays, which cross the process boundary as raw bytes instead of millions of Python ints.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from megatron_anchor.data.jsonl import BadRecord, Chunk, parse_record


@dataclass(frozen=True)
class EncodeOptions:
    """What a worker needs besides the tokenizer."""

    keys: tuple[str, ...]
    dtype: type  # numpy token dtype of the output files
    append_eod: bool = False
    eod_id: int | None = None
    skip_bad_records: bool = False


@dataclass
class KeyTokens:
    """One json key's documents of a chunk: tokens, sequence (sentence) lengths, sequences per document."""

    tokens: np.ndarray  # [total tokens] output dtype
    sequence_lengths: np.ndarray  # [sequences] int32
    sequences_per_document: np.ndarray  # [documents] int64

    def document_lengths(self) -> np.ndarray:
        """Tokens per document ``[documents]`` int64."""
        if len(self.sequences_per_document) == 0:
            return np.zeros(0, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(self.sequences_per_document)[:-1]])
        return np.add.reduceat(self.sequence_lengths.astype(np.int64), starts)


@dataclass
class ChunkResult:
    """A chunk's output: per key tokens, counters, and the first error when not skipping bad records.

    ``error_lines`` is the (first, last) line of the error, counted from 0 within the chunk: only the main
    process, which sees the chunks in order, knows the line numbers in the file.
    """

    keys: list[KeyTokens]
    lines: int
    counts: Counter = field(default_factory=Counter)
    error: str | None = None
    error_lines: tuple[int, int] = (0, 0)


_state: dict = {}


def init_worker(tokenizer, splitter, options: EncodeOptions) -> None:
    """Pool initializer: keep the tokenizer, the sentence splitter (or None) and the options."""
    # One tokenizing thread per worker: the pool is the parallelism (Hugging Face fast tokenizers would
    # otherwise start a thread per core in every worker).
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _state.update(tokenizer=tokenizer, splitter=splitter, options=options)


def encode_chunk(chunk: Chunk) -> ChunkResult:
    """Parse, split and tokenize a chunk with the state set by ``init_worker``."""
    return encode_lines(chunk, _state["tokenizer"], _state["splitter"], _state["options"])


def encode_lines(chunk: Chunk, tokenizer, splitter, options: EncodeOptions) -> ChunkResult:
    """Parse, split and tokenize ``chunk``: the pure form of ``encode_chunk``."""
    counts: Counter = Counter()
    texts: list[list[str]] = [[] for _ in options.keys]
    lines = chunk.read_lines()
    for offset, raw in enumerate(lines):
        counts["bytes"] += len(raw)
        try:
            record = parse_record(raw, options.keys)
        except BadRecord as bad:
            if not options.skip_bad_records:
                error = f"{bad} (pass --skip-bad-records to skip)"
                return ChunkResult([], len(lines), counts, error, (offset, offset))
            counts[f"skipped: {bad.kind}"] += 1
            continue
        if record is None:
            counts["skipped: blank line"] += 1
            continue
        counts["records"] += 1
        for key_texts, key, text in zip(texts, options.keys, record):
            if text.strip():
                key_texts.append(text)
            else:
                counts[f"empty texts ({key})"] += 1
    try:
        keys = [
            _tokenize(t, tokenizer, splitter, options, counts, key) for key, t in zip(options.keys, texts)
        ]
    except ValueError as error:
        return ChunkResult([], len(lines), counts, str(error), (0, len(lines) - 1))
    return ChunkResult(keys, len(lines), counts)


def _tokenize(texts, tokenizer, splitter, options: EncodeOptions, counts: Counter, key: str) -> KeyTokens:
    """Tokenize one key's texts; drop sentences and documents that give no tokens (counted)."""
    if splitter is not None:
        sentences = [splitter.tokenize(text) for text in texts]
        per_doc = np.fromiter(map(len, sentences), dtype=np.int64, count=len(sentences))
        arrays = tokenizer.encode_arrays(list(itertools.chain.from_iterable(sentences)))
    else:
        per_doc = np.ones(len(texts), dtype=np.int64)
        arrays = tokenizer.encode_arrays(texts)
    lengths = np.fromiter(map(len, arrays), dtype=np.int64, count=len(arrays))  # [sequences]
    keep = lengths > 0  # like Megatron, drop sentences without tokens
    per_doc = np.bincount(np.repeat(np.arange(len(per_doc)), per_doc)[keep], minlength=len(per_doc))
    if (per_doc == 0).any():
        counts[f"empty texts ({key})"] += int((per_doc == 0).sum())
        per_doc = per_doc[per_doc > 0]
    lengths = lengths[keep]
    kept = [array for array, k in zip(arrays, keep.tolist()) if k]
    tokens = np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64)  # [total] int32 or int64
    if options.append_eod and len(per_doc):
        last = np.cumsum(per_doc) - 1  # each document's last sequence
        tokens = np.insert(tokens, np.cumsum(lengths)[last], options.eod_id)
        lengths[last] += 1
    tokens = to_token_dtype(tokens, options.dtype)
    return KeyTokens(tokens, lengths.astype(np.int32), per_doc.astype(np.int64))


def to_token_dtype(tokens: np.ndarray, dtype: type) -> np.ndarray:
    """``tokens`` cast to ``dtype``; raises if an id does not fit (it would wrap around silently)."""
    if tokens.size and (tokens.min() < 0 or tokens.max() > np.iinfo(dtype).max):
        bad = int(tokens.max()) if tokens.max() > np.iinfo(dtype).max else int(tokens.min())
        raise ValueError(
            f"token id {bad} does not fit the output dtype {np.dtype(dtype).name} "
            f"(chosen from the tokenizer's vocabulary size)"
        )
    return tokens.astype(dtype)
