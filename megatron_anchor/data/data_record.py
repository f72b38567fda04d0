"""The record written beside every ``.bin/.idx`` pair this project writes: ``{prefix}.meta.json``.

megatron-core reads the two files unchanged and never this one. It says what the files hold and who wrote
them, so that a reader can tell a pair written together from a mix of two runs, and data from the training
tokenizer from data of another::

    format      1
    run_id      random hex of the run that wrote the pair
    layout      "packed" (anchored samples of seq_length + 1 tokens) or "plain" (one document per entry)
    seq_length, pack, anchor_id      packed layout only
    append_eod, eod_id               whether each document ends in the EOD token, and its id
    tokenizer   {type, model, vocab_size, crc32}    (``tokenizers.tokenizer_identity``)
    files       {".bin": {size, block, samples: [[offset, crc32], ...]}, ".idx": {...}}

``files`` holds CRC-32s of a few blocks spread over each file (the whole file when it is small), so the
check at open costs a few reads whatever the size of the corpus. Megatron-LM's own datasets have no record:
they get the size checks of ``indexed_writer.check_indexed_pair`` only.
"""

from __future__ import annotations

import json
import os
import zlib

from megatron_anchor._files import write_synced
from megatron_anchor.data.tokenizers import describe_tokenizer, same_vocabulary_files

RECORD_SUFFIX = ".meta.json"
RECORD_FORMAT = 1
PAIR_SUFFIXES = (".bin", ".idx")
SAMPLE_BLOCK = 4096  # bytes per checksummed block
SAMPLE_COUNT = 16  # blocks per file, first and last included


def record_path(prefix: str) -> str:
    """Where the record of ``prefix`` lives."""
    return prefix + RECORD_SUFFIX


def sampled_checksums(path: str) -> dict:
    """``{size, block, samples: [[offset, crc32], ...]}``: CRC-32s of ``SAMPLE_COUNT`` blocks of ``path``
    at evenly spaced offsets (every block when the file is that small)."""
    size = os.path.getsize(path)
    blocks = -(-size // SAMPLE_BLOCK)
    if blocks <= SAMPLE_COUNT:
        offsets = [k * SAMPLE_BLOCK for k in range(blocks)]
    else:
        last = size - SAMPLE_BLOCK
        offsets = [round(k * last / (SAMPLE_COUNT - 1)) for k in range(SAMPLE_COUNT)]
    with open(path, "rb") as stream:
        samples = [[offset, _block_crc(stream, offset)] for offset in offsets]
    return {"size": size, "block": SAMPLE_BLOCK, "samples": samples}


def _block_crc(stream, offset: int, block: int = SAMPLE_BLOCK) -> str:
    stream.seek(offset)
    return f"{zlib.crc32(stream.read(block)):08x}"


def write_record(path: str, contents: dict, run_id: str, files: dict[str, str]) -> None:
    """Write the record to ``path`` (synced): ``contents`` plus the run id and the checksums of ``files``
    (``{".bin": path, ".idx": path}``, the pair as it will be named once in place)."""
    record = {"format": RECORD_FORMAT, "run_id": run_id, **contents}
    record["files"] = {suffix: sampled_checksums(file) for suffix, file in files.items()}
    write_synced(path, json.dumps(record, indent=1) + "\n")


def read_record(prefix: str) -> dict | None:
    """The record beside ``prefix``, or None when there is none (e.g. Megatron-LM's own output)."""
    path = record_path(prefix)
    try:
        with open(path, encoding="utf-8") as stream:
            record = json.load(stream)
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: unreadable dataset record ({error})") from None
    if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
        raise ValueError(f"{path}: not a dataset record of this project (no 'files' entry)")
    return record


def check_written_together(prefix: str, record: dict) -> None:
    """Refuse a pair whose ``.bin`` or ``.idx`` is not the one the record describes (a few reads each)."""
    for suffix in PAIR_SUFFIXES:
        path, where = prefix + suffix, record_path(prefix)
        difference = _difference(path, record["files"].get(suffix))
        if difference:
            other = prefix + PAIR_SUFFIXES[1 - PAIR_SUFFIXES.index(suffix)]
            raise ValueError(
                f"{path} and {other} were not written together: {path} is not the file run "
                f"{record.get('run_id')} wrote ({difference}, per {where}); preprocess again, or delete "
                f"{where} if these files come from another tool"
            )


def _difference(path: str, want: dict | None) -> str | None:
    """How ``path`` differs from the file ``want`` describes (``sampled_checksums``' form), or None."""
    if not isinstance(want, dict):
        return "it is not recorded"
    size = os.path.getsize(path)
    if size != want.get("size"):
        return f"{size:,} bytes instead of {want.get('size'):,}"
    with open(path, "rb") as stream:
        for offset, crc in want.get("samples", []):
            if _block_crc(stream, offset, want.get("block", SAMPLE_BLOCK)) != crc:
                return f"other bytes at offset {offset:,}"
    return None


def check_data_tokenizer(prefix: str, training: dict | None, vocab_size: int) -> str | None:
    """Refuse data preprocessed with another tokenizer than ``training`` (``tokenizer_identity``; None when
    the run has only ``--vocab-size``); return a note where the data records no tokenizer."""
    recorded = (read_record(prefix) or {}).get("tokenizer")
    if not recorded:
        return (
            f"--data-path {prefix}: no tokenizer recorded beside it (in {record_path(prefix)}; Megatron-LM's "
            f"own preprocessing writes none): its token ids are checked against the vocabulary of "
            f"{vocab_size:,} sample by sample, its tokenizer cannot be"
        )
    if training is None:
        if recorded.get("vocab_size", 0) > vocab_size:
            raise ValueError(
                f"--data-path {prefix} was preprocessed with {describe_tokenizer(recorded)}, more ids than "
                f"--vocab-size {vocab_size:,}"
            )
        return None
    same_files = same_vocabulary_files(recorded.get("crc32"), training["crc32"])  # a file or its directory
    if recorded.get("vocab_size") != training["vocab_size"] or not same_files:
        raise ValueError(
            f"--data-path {prefix} was preprocessed with {describe_tokenizer(recorded)}, not the training "
            f"--tokenizer-model {describe_tokenizer(training)}: preprocess it again with the training "
            "tokenizer, or train with the data's"
        )
    return None
