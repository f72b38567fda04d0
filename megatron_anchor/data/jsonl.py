"""Reading jsonl corpora: input discovery, fixed-size line chunks, and per-record validation."""

from __future__ import annotations

import glob
import gzip
import json
import os
import zlib
from collections.abc import Iterator
from typing import NamedTuple

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz")
DEFAULT_CHUNK_BYTES = 1 << 21  # lines per worker task: large chunks amortise the inter-process hop
GZIP_MAGIC = b"\x1f\x8b"


class Chunk(NamedTuple):
    """Consecutive whole lines of one input file: the byte range ``[start, end)``, or the lines themselves.

    Uncompressed files travel as byte ranges, so the main process neither reads nor pickles the text; each
    worker reads its own range. Compressed files (gzip, known by its magic bytes, whatever the file's name)
    are decompressed by the main process and sent as lines.
    """

    path: str
    start: int
    end: int
    lines: list[bytes] | None = None

    def read_lines(self) -> list[bytes]:
        """The chunk's raw lines (newlines kept)."""
        if self.lines is not None:
            return self.lines
        with open(self.path, "rb") as stream:
            stream.seek(self.start)
            data = stream.read(self.end - self.start)
        return _split_on_newlines(data)


class BadRecord(ValueError):
    """A record that cannot be used; ``kind`` names the reason for the skip counters."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def find_input_files(spec: str) -> list[str]:
    """Files named by ``--input``: one file, a glob, or a directory of jsonl / jsonl.gz files (sorted)."""
    if os.path.isdir(spec):
        paths = [os.path.join(spec, name) for name in os.listdir(spec) if name.endswith(JSONL_SUFFIXES)]
    elif os.path.isfile(spec):
        paths = [spec]
    else:
        paths = [path for path in glob.glob(spec) if os.path.isfile(path)]
    if not paths:
        raise FileNotFoundError(f"--input {spec!r}: no such file, and no jsonl files match it")
    return sorted(paths)


def read_chunks(paths: list[str], chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[Chunk]:
    """Chunks of about ``chunk_bytes`` of whole lines, in file and line order."""
    for path in paths:
        if is_gzip(path):
            yield from _gzip_chunks(path, chunk_bytes)
            continue
        size = os.path.getsize(path)
        with open(path, "rb") as stream:
            start = 0
            while start < size:
                stream.seek(min(start + chunk_bytes, size))
                stream.readline()  # on to the end of the line
                yield Chunk(path, start, stream.tell())
                start = stream.tell()


def is_gzip(path: str) -> bool:
    """Whether the file starts with gzip's magic bytes (its name is neither needed nor trusted)."""
    with open(path, "rb") as stream:
        return stream.read(len(GZIP_MAGIC)) == GZIP_MAGIC


def _gzip_chunks(path: str, chunk_bytes: int) -> Iterator[Chunk]:
    """A gzip file's lines in chunks; damage anywhere in it is an error naming the file."""
    try:
        with gzip.open(path, "rb") as stream:
            while lines := stream.readlines(chunk_bytes):
                yield Chunk(path, -1, -1, lines)
    except (OSError, EOFError, zlib.error) as error:  # what gzip raises for bad headers, data and endings
        raise gzip.BadGzipFile(f"{path}: corrupt or truncated gzip file ({error})") from None


def _split_on_newlines(data: bytes) -> list[bytes]:
    """Lines ending at each ``\\n`` (only: ``splitlines`` would also split at ``\\r``), as ``readlines``."""
    lines = data.split(b"\n")
    last = lines.pop()
    return [line + b"\n" for line in lines] + ([last] if last else [])


def read_texts(spec: str, key: str) -> Iterator[str]:
    """The ``key`` text of every record of the jsonl file(s) ``--input`` names (plain or gzip), in order.

    Blank lines are skipped; a bad record is a ``ValueError`` naming its file and line.
    """
    for path in find_input_files(spec):
        line = 0
        for chunk in read_chunks([path]):
            for raw in chunk.read_lines():
                line += 1
                try:
                    texts = parse_record(raw, (key,))
                except BadRecord as bad:
                    raise ValueError(f"{path}:{line}: {bad}") from None
                if texts is not None:
                    yield texts[0]


def parse_record(raw: bytes, keys: tuple[str, ...]) -> list[str] | None:
    """The texts of ``keys`` in one jsonl line, or ``None`` for a blank line; raises ``BadRecord``."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BadRecord("invalid UTF-8", f"byte {error.start} of the line") from None
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise BadRecord("malformed JSON", str(error)) from None
    if not isinstance(record, dict):
        raise BadRecord("not a JSON object", f"got a {type(record).__name__}")
    texts = []
    for key in keys:
        if key not in record:
            raise BadRecord("missing key", f"{key!r} (--json-keys)")
        value = record[key]
        if not isinstance(value, str):
            raise BadRecord("non-string value", f"key {key!r} holds a {type(value).__name__}")
        texts.append(value)
    return texts
