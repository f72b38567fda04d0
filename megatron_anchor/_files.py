"""Durable writes, file checksums, output-path probes and file-system error messages, shared by the data
writer, the checkpoints, the trainer and the tools (torch-free).

A file is complete on disk only after ``fsync``; a rename is durable only after its directory is synced.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
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


def writable_problem(flag: str, path: str, is_file: bool = False) -> str | None:
    """Why ``path`` cannot be written (a directory, or a file in one), or None: it exists and is writable,
    or its nearest existing ancestor is a writable directory (the run creates the rest)."""
    target = os.path.abspath(path)
    if is_file:
        if os.path.isdir(target):
            return f"{flag} {path} is a directory"
        target = os.path.dirname(target)
    probe = nearest_existing(target)
    if not os.path.isdir(probe):
        return f"{flag} {path}: {probe} is a file, not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{flag} {path}: {probe} is not writable"
    return None


def write_probe(directory: str, nbytes: int = 4096) -> None:
    """Create ``directory`` if needed, write ``nbytes`` to a file there, flush it to disk and delete it;
    OSError if any of that fails (read-only mount, permissions, full disk, quota)."""
    probe = os.path.join(directory, f".write_probe_{socket.gethostname()}_{os.getpid()}")
    os.makedirs(directory, exist_ok=True)
    try:
        with open(probe, "wb") as f:
            f.write(bytes(nbytes))
            sync_and_close(f)
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def output_problem(flag: str, path: str) -> str | None:
    """Why directory ``path`` cannot take output (``writable_problem``, then a real write in it or in its
    nearest existing parent: read-only mounts, quotas and full disks fail there), or None. Creates nothing."""
    problem = writable_problem(flag, path)
    if problem:
        return problem
    directory = nearest_existing(path)
    try:
        write_probe(directory)
    except OSError as err:
        return f"{flag} {path}: {directory} is not writable: {os_error_message(err, directory)}"
    return None
