"""File sizes and checksums of a checkpoint, verified on load; writability probes and save-error messages.

The checksum is CRC-32 (``zlib.crc32``), streamed in 8 MiB blocks: it catches zeroed pages, random bytes
and truncation, and runs at several GB/s, so a multi-GB checkpoint costs seconds on top of the I/O.
"""

from __future__ import annotations

import os

import torch.distributed as dist

from megatron_anchor._files import file_crc32, free_space, os_error_message, write_probe
from megatron_anchor.checkpoint.layout import META_FILE, CheckpointError, previous_checkpoint


def describe_files(root: str, names: list[str]) -> dict[str, dict]:
    """``{name: {"size": bytes, "crc32": hex}}`` for files ``names`` (relative to ``root``)."""
    out = {}
    for name in names:
        path = os.path.join(root, name)
        out[name] = {"size": os.path.getsize(path), "crc32": file_crc32(path)}
    return out


def checkpoint_files(root: str) -> list[str]:
    """Every file under ``root`` except ``meta.json``, as sorted relative paths."""
    found = []
    for parent, _, files in os.walk(root):
        for name in files:
            rel = os.path.relpath(os.path.join(parent, name), root)
            if rel != META_FILE:
                found.append(rel)
    return sorted(found)


def _problem(root: str, name: str, want: dict) -> str | None:
    path = os.path.join(root, name)
    if not os.path.isfile(path):
        return f"{path} is missing"
    size = os.path.getsize(path)
    if size != want["size"]:
        return f"{path} has {size} bytes, {want['size']} were written (truncated or overwritten)"
    crc = file_crc32(path)
    if crc != want["crc32"]:
        return f"{path} is damaged (CRC-32 {crc}, {want['crc32']} when written)"
    return None


def _entry_problem(name: object, entry: object) -> str | None:
    """Why a ``files`` entry of ``meta.json`` cannot be checked (None when it can)."""
    if not isinstance(name, str) or os.path.isabs(name) or os.path.normpath(name).startswith(".."):
        return f"{name!r} is not a path inside the checkpoint"
    if not isinstance(entry, dict):
        return f"the entry of {name} is not an object"
    missing = [k for k in ("size", "crc32") if k not in entry]
    if missing:
        return f"the entry of {name} has no {' or '.join(repr(k) for k in missing)}"
    if not isinstance(entry["size"], int) or not isinstance(entry["crc32"], str):
        return f"the entry of {name} has a malformed 'size' or 'crc32'"
    return None


def checked_manifest(checkpoint_dir: str, meta: dict) -> dict[str, dict]:
    """``meta["files"]``, once every file of the checkpoint is listed there with a size and a CRC-32;
    CheckpointError naming ``meta.json`` otherwise (a file left out would load unchecked)."""
    meta_path = os.path.join(checkpoint_dir, META_FILE)
    manifest = meta.get("files")
    if not isinstance(manifest, dict) or not manifest:
        raise CheckpointError(
            f"{meta_path} lists no files with checksums ('files'): a checkpoint whose files cannot be "
            f"checked is not loaded"
        )
    for name, entry in manifest.items():
        problem = _entry_problem(name, entry)
        if problem:
            raise CheckpointError(f"{meta_path}: {problem} (each file needs its size and crc32)")
    unlisted = [n for n in checkpoint_files(checkpoint_dir) if n not in manifest]
    if unlisted:
        more = f" (and {len(unlisted) - 1} more)" if len(unlisted) > 1 else ""
        raise CheckpointError(
            f"{os.path.join(checkpoint_dir, unlisted[0])}{more} is not listed in {meta_path}, so its "
            f"checksum cannot be checked (was meta.json edited?)"
        )
    return manifest


def verify_checkpoint(checkpoint_dir: str, meta: dict) -> None:
    """Check that ``meta["files"]`` lists every file, then each file's size and CRC-32; CheckpointError naming
    the first bad file (or ``meta.json``) and the previous checkpoint. Under torch.distributed the files are
    split over the ranks (collective)."""
    manifest = checked_manifest(checkpoint_dir, meta)
    names = sorted(manifest)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    mine = [
        p
        for i, n in enumerate(names)
        if i % world == rank and (p := _problem(checkpoint_dir, n, manifest[n]))
    ]
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, mine)
        mine = [p for part in gathered for p in part]
    if mine:
        previous = previous_checkpoint(checkpoint_dir)
        hint = f"; load the previous checkpoint instead: --load {previous}" if previous else ""
        more = f" (and {len(mine) - 1} more)" if len(mine) > 1 else ""
        raise CheckpointError(f"checkpoint file {mine[0]}{more}{hint}")


def dcp_failure(err: Exception, path: str) -> str:
    """DCP's ``CheckpointException`` from saving into ``path`` as one line: the first failed rank, its
    errno, file and free space."""
    rank, (exc, _) = min(err.failures.items())
    return f"writing checkpoint {path} failed on rank {rank}: {write_failure_detail(exc, path)}"


def write_failure_detail(err: BaseException, path: str) -> str:
    """Errno, file and free space of a failed write into ``path``. A writer that reports a short write
    without its OSError (torch.save's stream: "unexpected pos ...") is followed by a 1 MiB probe write,
    which meets the same full disk, quota or size limit and reports its errno."""
    if isinstance(err, OSError):
        return os_error_message(err, path)
    try:
        write_probe(path, 1 << 20)
    except OSError as probe_err:
        return f"{type(err).__name__}: {err}; a probe write there: {os_error_message(probe_err, path)}"
    return f"{type(err).__name__}: {err} ({free_space(path)} free on {path})"
