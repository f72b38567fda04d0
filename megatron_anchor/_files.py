"""Durable writes, file checksums and file-system error messages, shared by the data writer and the
checkpoints (torch-free).

A file is complete on disk only after ``fsync``; a rename is durable only after its directory is synced.
"""

from __future__ import annotations

import errno
import os
import shutil
import zlib

_CRC_BLOCK = 8 << 20  # bytes read per step of a checksum


def sync_and_close(stream) -> None:
    """Flush ``stream``, fsync it and close it."""
    stream.flush()
    os.fsync(stream.fileno())
    stream.close()


def sync_directory(directory: str) -> None:
    """fsync ``directory`` itself, so that the renames and creations in it reach the disk."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_synced(path: str, text: str) -> None:
    """Write ``text`` to ``path`` and fsync it."""
    with open(path, "w") as stream:  # closed on an error too
        stream.write(text)
        sync_and_close(stream)


def file_crc32(path: str) -> str:
    """CRC-32 of the file's bytes as 8 hex digits (streamed in 8 MiB blocks)."""
    crc = 0
    buf = bytearray(_CRC_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            crc = zlib.crc32(view[:n], crc)
    return f"{crc:08x}"


def nearest_existing(path: str) -> str:
    """``path`` made absolute, or its nearest parent that exists."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe) and probe != os.path.dirname(probe):
        probe = os.path.dirname(probe)
    return probe


def free_space(path: str) -> str:
    """Free space on the filesystem holding ``path`` (or its nearest existing parent), human-readable."""
    free = shutil.disk_usage(nearest_existing(path)).free
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            break
        free /= 1024
    return f"{free:.1f} {unit}" if unit != "B" else f"{free} B"


def os_error_message(err: OSError, path: str) -> str:
    """``[Errno 28 ENOSPC] No space left on device: 'file' (1.2 MiB free on path)``."""
    name = errno.errorcode.get(err.errno, "?") if err.errno is not None else "?"
    where = err.filename or path
    return f"[Errno {err.errno} {name}] {err.strerror or err}: {where!r} ({free_space(path)} free on {path})"
