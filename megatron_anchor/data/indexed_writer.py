"""megatron-core ``MMIDIDX`` ``.bin/.idx`` pairs: writing them safely, and checking a pair before reading it.

The bytes are exactly those of megatron-core's ``IndexedDatasetBuilder`` (tests compare them), and
megatron-core's ``IndexedDataset`` reads the files unchanged. It is written here rather than imported
because importing megatron-core costs seconds per run (more than tokenizing tens of MB), and its builder
keeps every sequence length as a Python int and computes the pointers in a Python loop; here they are numpy
arrays, one per chunk of documents.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import struct
from collections.abc import Iterator

import numpy as np

from megatron_anchor._files import free_space, sync_and_close, sync_directory
from megatron_anchor._output_lock import OutputLock
from megatron_anchor.data.data_record import check_written_together, read_record, record_path, write_record

INDEX_HEADER = b"MMIDIDX\x00\x00"  # megatron.core.datasets.indexed_dataset._INDEX_HEADER
INDEX_VERSION = 1
INDEX_PREAMBLE = struct.Struct("<9sQBQQ")  # header, version, dtype code, sequence count, document count
# megatron.core.datasets.indexed_dataset.DType codes
DTYPE_CODES = {np.uint8: 1, np.int8: 2, np.int16: 3, np.int32: 4, np.int64: 5, np.uint16: 8}
_ITEM_SIZES = {code: np.dtype(dtype).itemsize for dtype, code in DTYPE_CODES.items()}
_TEMPORARY = r"\.(bin|idx|meta\.json)\.\d+-[0-9a-f]{8}\.tmp"  # after the prefix: .bin.{pid}-{random}.tmp


def token_dtype(vocab_size: int) -> type:
    """megatron-core's ``DType.optimal_dtype``: uint16 for vocabularies under 65500 ids, else int32."""
    return np.uint16 if vocab_size < 65500 else np.int32


class IndexedWriter:
    """Documents in, ``{prefix}.bin`` / ``{prefix}.idx`` and their record ``{prefix}.meta.json`` out (the
    ``record`` contents plus a run id and checksums, ``data_record``); nothing under the final names until
    ``commit``.

    The writer holds ``{prefix}.lock`` from construction to ``commit`` or ``abort``, so a second writer of
    the same prefix is refused (``OutputLockedError``); it then removes temporary files that killed runs
    left. Writes go to ``{prefix}.bin.{pid}-{random}.tmp``; ``commit`` writes the index the same way, syncs
    both to disk, and renames them into place. ``abort`` removes the temporary files, so a failed or
    interrupted run leaves nothing that looks complete. Write errors name the file and the free space.
    """

    def __init__(self, prefix: str, dtype: type, record: dict | None = None) -> None:
        if dtype not in DTYPE_CODES:
            raise ValueError(f"unsupported token dtype {dtype}")
        self.directory = os.path.dirname(prefix) or "."
        os.makedirs(self.directory, exist_ok=True)
        self.prefix, self.dtype, self.record = prefix, dtype, record or {}
        self._lock = OutputLock(prefix + ".lock", "--output-prefix")
        try:
            remove_stale_temporaries(prefix)
            tag = f"{os.getpid()}-{secrets.token_hex(4)}"
            self.tmp_bin, self.tmp_idx = f"{prefix}.bin.{tag}.tmp", f"{prefix}.idx.{tag}.tmp"
            self.tmp_record = f"{record_path(prefix)}.{tag}.tmp"
            self._bin = open(self.tmp_bin, "xb")  # closed by commit or abort
        except BaseException:
            self._lock.release()
            raise
        self._sequence_lengths: list[np.ndarray] = []
        self._document_ends: list[np.ndarray] = []
        self._sequences = 0
        self.documents = 0
        self.lock_taken_over: str | None = self._lock.taken_over
        """A note when the lock file was left by a run that ended without releasing it (else None)."""

    def add_documents(
        self, tokens: np.ndarray, sequence_lengths: np.ndarray, sequences_per_document: np.ndarray
    ) -> None:
        """Append documents: ``tokens [n]``, ``sequence_lengths [seqs]``, ``sequences_per_document [d]``."""
        consistent = int(np.sum(sequence_lengths)) == len(tokens)
        if not consistent or int(np.sum(sequences_per_document)) != len(sequence_lengths):
            raise ValueError("tokens, sequence lengths and sequences per document do not add up")
        with self._naming(self.tmp_bin):
            self._bin.write(np.ascontiguousarray(tokens, dtype=self.dtype).tobytes())
        self._sequence_lengths.append(np.asarray(sequence_lengths, dtype=np.int32))
        self._document_ends.append(self._sequences + np.cumsum(sequences_per_document, dtype=np.int64))
        self._sequences += len(sequence_lengths)
        self.documents += len(sequences_per_document)

    def add_document(self, tokens: np.ndarray, sequence_lengths: list[int]) -> None:
        """Append one document ``tokens [n]`` made of sequences of the given lengths."""
        self.add_documents(tokens, np.asarray(sequence_lengths), np.array([len(sequence_lengths)]))

    def commit(self) -> tuple[str, str]:
        """Write the index and the record, sync them, move the three files to their final names; return
        ``(bin, idx)`` paths. The record goes first and the index last, so that a crash at any point
        leaves no ``.idx`` beside a ``.bin`` it was not written with."""
        with self._naming(self.tmp_bin):
            sync_and_close(self._bin)
        lengths = np.concatenate([np.zeros(0, np.int32), *self._sequence_lengths])  # [sequences] int32
        pointers = np.zeros(len(lengths), dtype=np.int64)  # byte offset of each sequence
        np.cumsum(lengths[:-1].astype(np.int64) * np.dtype(self.dtype).itemsize, out=pointers[1:])
        document_indices = np.concatenate([np.zeros(1, np.int64), *self._document_ends])  # [docs + 1]
        with self._naming(self.tmp_idx), open(self.tmp_idx, "xb") as idx:
            code = DTYPE_CODES[self.dtype]
            idx.write(
                INDEX_PREAMBLE.pack(INDEX_HEADER, INDEX_VERSION, code, len(lengths), len(document_indices))
            )
            for array in (lengths, pointers, document_indices):
                idx.write(array.tobytes(order="C"))
            sync_and_close(idx)
        with self._naming(self.tmp_record):
            files = {".bin": self.tmp_bin, ".idx": self.tmp_idx}
            write_record(self.tmp_record, self.record, secrets.token_hex(8), files)
        final_bin, final_idx = self.prefix + ".bin", self.prefix + ".idx"
        with contextlib.suppress(FileNotFoundError):
            os.remove(final_idx)  # so that no moment pairs an earlier run's .idx with the new .bin
        os.replace(self.tmp_record, record_path(self.prefix))
        os.replace(self.tmp_bin, final_bin)
        os.replace(self.tmp_idx, final_idx)
        with self._naming(self.directory):
            sync_directory(self.directory)  # the renames themselves
        self._lock.release()
        return final_bin, final_idx

    def abort(self) -> None:
        """Close and delete the temporary files; release the output."""
        with contextlib.suppress(OSError):
            self._bin.close()
        for path in (self.tmp_bin, self.tmp_idx, self.tmp_record):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
        self._lock.release()

    @contextlib.contextmanager
    def _naming(self, path: str) -> Iterator[None]:
        """Re-raise an ``OSError`` of a write (which names no file) naming ``path`` and the free space."""
        try:
            yield
        except OSError as error:
            if error.filename is not None or error.errno is None:
                raise
            free = free_space(self.directory)
            raise OSError(error.errno, f"{error.strerror} ({free} free there)", path) from error


def remove_stale_temporaries(prefix: str) -> list[str]:
    """Delete temporary files of ``prefix`` that killed runs left; call it only while holding its lock."""
    directory, base = os.path.dirname(prefix) or ".", os.path.basename(prefix)
    pattern = re.compile(re.escape(base) + _TEMPORARY)
    stale = [os.path.join(directory, name) for name in os.listdir(directory) if pattern.fullmatch(name)]
    for path in stale:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    return stale


def check_indexed_pair(prefix: str) -> dict | None:
    """Refuse a ``.bin/.idx`` pair whose ``.bin`` size is not the one its ``.idx`` describes, an empty one,
    or one that its record (``{prefix}.meta.json``) shows was not written together; return the record
    (None for files without one, e.g. Megatron-LM's).

    A mismatched pair (files of two runs, a truncated copy, an ``.idx`` of another packing of the same
    corpus beside a ``.bin`` of the same size) would otherwise read as wrong tokens or wrong documents.
    """
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    with open(idx_path, "rb") as idx:
        preamble = idx.read(INDEX_PREAMBLE.size)
        if len(preamble) < INDEX_PREAMBLE.size or not preamble.startswith(INDEX_HEADER):
            raise ValueError(f"{idx_path}: not a megatron-core MMIDIDX index (truncated or another format)")
        _, version, code, sequences, documents = INDEX_PREAMBLE.unpack(preamble)
        # int32 lengths and int64 pointers per sequence, then int64 document offsets
        idx_bytes = INDEX_PREAMBLE.size + 12 * sequences + 8 * documents
        if version != INDEX_VERSION or code not in _ITEM_SIZES or os.path.getsize(idx_path) != idx_bytes:
            raise ValueError(
                f"{idx_path}: corrupt index (version {version}, dtype code {code}, {sequences:,} sequences "
                f"and {documents:,} document offsets need {idx_bytes:,} bytes, the file has "
                f"{os.path.getsize(idx_path):,})"
            )
        expected = 0
        if sequences:
            idx.seek(INDEX_PREAMBLE.size + 4 * (sequences - 1))
            last_length = int(np.frombuffer(idx.read(4), np.int32)[0])
            idx.seek(INDEX_PREAMBLE.size + 4 * sequences + 8 * (sequences - 1))
            last_pointer = int(np.frombuffer(idx.read(8), np.int64)[0])
            expected = last_pointer + last_length * _ITEM_SIZES[code]
    actual = os.path.getsize(bin_path)
    if actual != expected:
        raise ValueError(
            f"{bin_path} has {actual:,} bytes but {idx_path} describes {expected:,}: the two files are from "
            "different runs or one is incomplete; preprocess again"
        )
    if expected == 0:
        raise ValueError(f"{idx_path}: the dataset holds no tokens; preprocess a non-empty corpus")
    record = read_record(prefix)
    if record is not None:
        check_written_together(prefix, record)
    return record
