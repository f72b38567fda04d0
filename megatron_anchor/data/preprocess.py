"""Corpus preprocessing: jsonl in, megatron-core indexed datasets out, plain or packed with anchors.

The main process cuts the input into chunks of whole lines (byte ranges; gzip files it decompresses) and
writes; a process pool reads, parses and tokenizes the chunks. Results are consumed in input order, so the
output does not depend on the number of workers. Packed mode streams: only the packer's window of documents
is held, as numpy token arrays.

A run either writes complete outputs or none: the outputs are locked while written (``IndexedWriter``), a
worker that dies (the out-of-memory killer's SIGKILL) ends the run at once, and a run that would write no
documents is an error. Errors are ``PreprocessError`` (input, flags, workers) or ``OSError`` (files), each
with a one-line message naming the file, line or flag.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from megatron_anchor.data.encode import ChunkResult, EncodeOptions, encode_chunk, init_worker
from megatron_anchor.data.indexed_writer import IndexedWriter, token_dtype
from megatron_anchor.data.jsonl import (
    DEFAULT_CHUNK_BYTES,
    BadRecord,
    Chunk,
    find_input_files,
    parse_record,
    read_chunks,
)
from megatron_anchor.data.packed_writer import KeyStats, PackedStream, plain_stats
from megatron_anchor.data.packing import PACKERS
from megatron_anchor.data.tokenizers import build_tokenizer, default_anchor_id, tokenizer_identity
from megatron_anchor.data.worker_pool import OrderedPool, WorkerDied

PUNKT_TRAINING_BYTES = 8 << 20  # input text used to train punkt parameters when no punkt data is installed


class PreprocessError(ValueError):
    """A run that cannot complete: bad input or flags, nothing to write, or a dead worker (one line)."""


@dataclass
class PreprocessConfig:
    """The options of ``tools/preprocess_data.py`` (Megatron's flag names, plus anchor packing)."""

    input: str
    output_prefix: str
    tokenizer_type: str
    tokenizer_model: str
    json_keys: tuple[str, ...] = ("text",)
    append_eod: bool = False
    split_sentences: bool = False
    lang: str = "english"
    keep_newlines: bool = False
    workers: int = 1
    log_interval: int = 1000
    seq_length: int | None = None
    pack: str | None = None  # None: "greedy" when seq_length is given, else "none"
    anchor_token_id: int | None = None
    partial_sample: str = "pad"
    skip_bad_records: bool = False
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    progress: bool = True


@dataclass
class PreprocessSummary:
    """What a run read, skipped and wrote."""

    counts: Counter
    keys: dict[str, KeyStats]
    pack: str
    seq_length: int | None
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return sum(stats.tokens for stats in self.keys.values())

    def format(self) -> str:
        """A human-readable report."""
        counts = self.counts
        lines = [f"records used: {counts['records']:,} (input read: {counts['bytes'] / 1e6:.1f} MB)"]
        lines += [f"{name}: {n:,}" for name, n in skip_counts(counts)]
        for key, stats in self.keys.items():
            lines += stats.format(key, self.pack, self.seq_length)
        rate = self.tokens / self.wall_s if self.wall_s > 0 else 0.0
        lines.append(f"wall time {self.wall_s:.2f} s, {rate / 1e6:.2f} M tokens/s")
        return "\n".join(lines)


def skip_counts(counts: Counter) -> list[tuple[str, int]]:
    """The counters of records and texts that were skipped, by reason."""
    return [(name, n) for name, n in sorted(counts.items()) if name.startswith(("skipped", "empty"))]


def output_prefix(config: PreprocessConfig, key: str) -> str:
    """Megatron's naming: ``{output_prefix}_{key}_{document|sentence}``."""
    return f"{config.output_prefix}_{key}_{'sentence' if config.split_sentences else 'document'}"


def resolve_pack_mode(config: PreprocessConfig) -> str:
    """The packing mode: ``none`` without ``--seq-length``, ``greedy`` by default with it."""
    if config.seq_length is not None and config.seq_length < 1:
        raise PreprocessError(f"--seq-length must be positive, got {config.seq_length}")
    mode = config.pack or ("greedy" if config.seq_length else "none")
    if mode != "none" and mode not in PACKERS:
        raise PreprocessError(f"--pack {mode!r}: expected none, {', '.join(PACKERS)}")
    if mode != "none" and not config.seq_length:
        raise PreprocessError(f"--pack {mode} needs --seq-length")
    if mode == "none" and config.seq_length:
        raise PreprocessError("--pack none writes unpacked documents: drop --seq-length, or choose a packer")
    if config.partial_sample not in ("pad", "drop"):
        raise PreprocessError(f"--partial-sample {config.partial_sample!r}: expected pad or drop")
    return mode


def run_preprocess(config: PreprocessConfig) -> PreprocessSummary:
    """Preprocess ``config.input`` into indexed datasets; return the summary once the files are complete."""
    start = time.perf_counter()
    mode = resolve_pack_mode(config)
    paths = find_input_files(config.input)
    tokenizer = build_tokenizer(config.tokenizer_type, config.tokenizer_model)
    dtype = token_dtype(tokenizer.vocab_size)
    options = EncodeOptions(
        tuple(config.json_keys), dtype, config.append_eod, tokenizer.eos_id, config.skip_bad_records
    )
    if config.append_eod and tokenizer.eos_id is None:
        raise PreprocessError("--append-eod: the tokenizer has no EOS token")
    anchor = _anchor_id(config, tokenizer, dtype) if mode != "none" else None
    notes: list[str] = []
    splitter = _sentence_splitter(config, paths, notes) if config.split_sentences else None
    counts: Counter = Counter()
    try:
        with OrderedPool(config.workers, encode_chunk, init_worker, (tokenizer, splitter, options)) as pool:
            # Opened (and locked) once the workers exist, so that they do not inherit the lock: it must end
            # with this process. Nothing has been read yet: a locked or unwritable output costs no work.
            chunk_results = pool.map(read_chunks(paths, config.chunk_bytes))
            record = _record(config, tokenizer, mode, anchor)
            stats = _write_outputs(config, chunk_results, counts, dtype, record)
    except WorkerDied as error:
        raise PreprocessError(
            f"a tokenizer {error}; nothing was written. If memory is short (the out-of-memory killer sends "
            "SIGKILL), run again with fewer --workers"
        ) from None
    summary = PreprocessSummary(
        counts, dict(zip(config.json_keys, stats)), mode, config.seq_length, notes=notes
    )
    summary.wall_s = time.perf_counter() - start
    return summary


def _record(config: PreprocessConfig, tokenizer, mode: str, anchor: int | None) -> dict:
    """What the files of this run hold and which tokenizer wrote them (``data_record``)."""
    if mode == "none":
        layout = {"layout": "plain"}
    else:
        layout = {"layout": "packed", "seq_length": config.seq_length, "pack": mode, "anchor_id": anchor}
    return {
        **layout,
        "append_eod": config.append_eod,
        "eod_id": tokenizer.eos_id if config.append_eod else None,
        "tokenizer": tokenizer_identity(config.tokenizer_type, config.tokenizer_model, tokenizer.vocab_size),
    }


def _write_outputs(config: PreprocessConfig, chunk_results, counts: Counter, dtype: type, record: dict):
    """Write every key's documents, plain or packed as ``record`` says; commit all or abort all."""
    writers: list[IndexedWriter] = []
    try:
        for key in config.json_keys:
            writers.append(IndexedWriter(output_prefix(config, key), dtype, record))
            if writers[-1].lock_taken_over:  # a killed run's lock file: said, as the trainer says it
                print(f"note: {writers[-1].lock_taken_over}", file=sys.stderr)
        results = _checked(chunk_results, counts, config)
        if record["layout"] == "plain":
            stats = _write_plain(results, writers)
        else:
            stats = _write_packed(results, writers, record, config.partial_sample)
        _check_written(config, writers, stats, counts)
        for writer in writers:
            writer.commit()
    except BaseException:
        for writer in writers:
            writer.abort()
        raise
    return stats


def _check_written(config: PreprocessConfig, writers: list[IndexedWriter], stats: list[KeyStats], counts):
    """Refuse to finish a run that wrote no documents for some key (its dataset could not be read)."""
    for key, writer, key_stats in zip(config.json_keys, writers, stats):
        if writer.documents:
            continue
        if key_stats.tokens:  # packed, and the partial sample was dropped
            reason = (
                f"its {key_stats.tokens:,} tokens do not fill one sample of --seq-length {config.seq_length} "
                "and --partial-sample drop dropped them"
            )
        else:
            skipped = "".join(f"; {name}: {n:,}" for name, n in skip_counts(counts))
            reason = f"no text in {counts['records']:,} records used{skipped}"
        raise PreprocessError(f"--input {config.input}: no documents to write for key {key!r}: {reason}")


def _anchor_id(config: PreprocessConfig, tokenizer, dtype: type) -> int:
    anchor = config.anchor_token_id if config.anchor_token_id is not None else default_anchor_id(tokenizer)
    limit = min(tokenizer.vocab_size, np.iinfo(dtype).max + 1)
    if not 0 <= anchor < limit:
        raise PreprocessError(
            f"--anchor-token-id {anchor} is outside the vocabulary (size {tokenizer.vocab_size}, "
            f"output dtype {np.dtype(dtype).name})"
        )
    return anchor


def _sentence_splitter(config: PreprocessConfig, paths: list[str], notes: list[str]):
    from megatron_anchor.data.sentences import (
        build_sentence_splitter,
        installed_punkt_params,
        train_punkt_params,
    )

    params = installed_punkt_params(config.lang)
    if params is None:
        params = train_punkt_params(_leading_texts(paths, config.json_keys, PUNKT_TRAINING_BYTES))
        note = (
            f"nltk punkt data for {config.lang!r} is not installed: trained punkt parameters on the first "
            f"{PUNKT_TRAINING_BYTES >> 20} MB of the input instead"
        )
        print(note, file=sys.stderr)
        notes.append(note)
    return build_sentence_splitter(params, config.keep_newlines)


def _leading_texts(paths: list[str], keys: Iterable[str], budget: int) -> Iterator[str]:
    """Texts from the start of the input, up to ``budget`` bytes; bad records are left to the main pass."""
    for chunk in read_chunks(paths, 1 << 20):
        for raw in chunk.read_lines():
            try:
                texts = parse_record(raw, tuple(keys))
            except BadRecord:
                continue
            yield from texts or []
            budget -= len(raw)
            if budget <= 0:
                return


def _checked(
    results: Iterable[tuple[Chunk, ChunkResult]], counts: Counter, config: PreprocessConfig
) -> Iterator[ChunkResult]:
    """Stop at the first error, naming its file and line; add up counters; show progress."""
    from tqdm import tqdm

    path, first_line = None, 1  # the current file and the line number of the chunk's first line
    with tqdm(
        unit=" records", disable=not config.progress, miniters=config.log_interval, file=sys.stderr
    ) as bar:
        for chunk, result in results:
            if chunk.path != path:
                path, first_line = chunk.path, 1
            counts.update(result.counts)
            if result.error:
                first, last = (first_line + n for n in result.error_lines)
                where = f"{path}:{first}" if first == last else f"{path}:{first}-{last}"
                raise PreprocessError(f"{where}: {result.error}")
            first_line += result.lines
            bar.update(result.counts["records"])
            yield result


def _write_plain(results: Iterable[ChunkResult], writers: list[IndexedWriter]) -> list[KeyStats]:
    stats = [KeyStats() for _ in writers]
    for result in results:
        for writer, key_stats, tokens in zip(writers, stats, result.keys):
            writer.add_documents(tokens.tokens, tokens.sequence_lengths, tokens.sequences_per_document)
            plain_stats(key_stats, tokens)
    return stats


def _write_packed(results, writers, record: dict, partial: str) -> list[KeyStats]:
    feeds = itertools.tee(results, len(writers))
    anchor, seq_length, mode = record["anchor_id"], record["seq_length"], record["pack"]
    streams = [
        PackedStream(feed, index, writer, anchor, seq_length, mode, partial)
        for index, (feed, writer) in enumerate(zip(feeds, writers))
    ]
    active = list(streams)
    while active:
        # Advance the key that has read the fewest chunks, so ``tee`` buffers at most a chunk or two.
        stream = min(active, key=lambda s: s.chunks_read)
        if not stream.step():
            active.remove(stream)
    return [stream.finish() for stream in streams]
