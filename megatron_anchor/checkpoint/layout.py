"""Where checkpoints live on disk: ``DIR/iter_NNNNNNN/`` directories, the ``latest`` pointer, atomic commits.

A checkpoint is written into ``iter_NNNNNNN.tmp`` and renamed once complete; ``latest`` is then replaced
atomically, so ``latest`` never names a half-written checkpoint. A ``.tmp`` left by a crash or a full disk
is removed by the next save into the same directory.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

from megatron_anchor._files import sync_directory, write_synced

LATEST = "latest"
META_FILE = "meta.json"
TMP_SUFFIX = ".tmp"
_ITER_RE = re.compile(r"^iter_(\d{7,})$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file, directory or flag."""


def iter_dir_name(step: int) -> str:
    """``iter_0000020`` for step 20."""
    return f"iter_{step:07d}"


def is_checkpoint(path: str) -> bool:
    """Whether ``path`` is a complete checkpoint directory (it holds ``meta.json``)."""
    return os.path.isfile(os.path.join(path, META_FILE))


def find_checkpoint(path: str) -> str | None:
    """``path`` itself if it is a checkpoint, else the one its ``latest`` file names, else None."""
    if is_checkpoint(path):
        return path
    pointer = os.path.join(path, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        found = os.path.join(path, f.read().strip())
    if not is_checkpoint(found):
        raise CheckpointError(f"{pointer} names {found}, which is not a complete checkpoint")
    return found


def why_not_a_checkpoint(path: str) -> str:
    """A short reason why ``path`` holds no checkpoint, with the likely fix."""
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isdir(path):
        return "is a file, not a checkpoint directory"
    if os.path.isfile(os.path.join(path, "config.json")):
        return (
            "is a Hugging Face model directory, not a checkpoint: convert it first with "
            "tools/convert_hf_checkpoint.py import"
        )
    steps = complete_steps(path)
    if steps:
        return f"has no '{LATEST}' file; give one of its checkpoints, e.g. {os.path.join(path, steps[-1][1])}"
    return f"holds neither {META_FILE} nor a '{LATEST}' file"


def resolve_checkpoint(path: str) -> str:
    """The checkpoint directory that ``path`` is or names (via ``latest``); CheckpointError if none."""
    found = find_checkpoint(path)
    if found is None:
        raise CheckpointError(f"{path} {why_not_a_checkpoint(path)}")
    return found


# (path, inode, mtime, ctime, size) -> text: each version read once per process (a copy that keeps the mtime
# still has a new inode or ctime, which no tool sets back)
_META_TEXT: dict[tuple, str] = {}


def read_meta(checkpoint_dir: str) -> dict:
    """The checkpoint's ``meta.json`` (a fresh dict each call; the file is read again only if it changed)."""
    path = os.path.join(checkpoint_dir, META_FILE)
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
    if key not in _META_TEXT:
        with open(path) as f:
            _META_TEXT[key] = f.read()
    try:
        return json.loads(_META_TEXT[key])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from err


def check_tp_size(meta: dict, where: str, tp: int) -> None:
    """ValueError unless the checkpoint of ``meta`` (named ``where`` in the message) has TP size ``tp``."""
    if meta["tp"] != tp:
        raise ValueError(
            f"{where} was saved at --tensor-model-parallel-size {meta['tp']}; this run uses {tp} (TP "
            f"resharding is not supported: run at TP {meta['tp']}, or convert its weights again at TP {tp})"
        )


def write_meta(checkpoint_dir: str, meta: dict) -> None:
    """Write ``meta.json`` and flush it to disk (it is the mark of a complete checkpoint)."""
    write_synced(os.path.join(checkpoint_dir, META_FILE), json.dumps(meta, indent=1, default=str) + "\n")


def _step_of(name: str) -> int | None:
    match = _ITER_RE.match(name)
    return int(match.group(1)) if match else None


def previous_checkpoint(checkpoint_dir: str) -> str | None:
    """The newest complete checkpoint beside ``checkpoint_dir`` with a smaller step, or None."""
    parent, name = os.path.split(os.path.normpath(checkpoint_dir))
    step = _step_of(name)
    if step is None or not os.path.isdir(parent):
        return None
    older = [(s, n) for s, n in complete_steps(parent) if s < step]
    return os.path.join(parent, older[-1][1]) if older else None


def complete_steps(parent: str) -> list[tuple[int, str]]:
    """``(step, name)`` of the complete ``iter_*`` checkpoints in ``parent``, by step."""
    steps = ((_step_of(n), n) for n in os.listdir(parent))
    return sorted((s, n) for s, n in steps if s is not None and is_checkpoint(os.path.join(parent, n)))


def remove_stale_tmp(save_dir: str) -> list[str]:
    """Delete ``iter_*.tmp`` directories (interrupted saves) under ``save_dir``; returns what was removed."""
    stale = sorted(glob.glob(os.path.join(glob.escape(save_dir), "iter_*" + TMP_SUFFIX)))
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


def commit_checkpoint(tmp_dir: str, final_dir: str) -> None:
    """Move the complete ``tmp_dir`` to ``final_dir`` and point ``latest`` at it (each step atomic)."""
    save_dir = os.path.dirname(final_dir)
    if os.path.exists(final_dir):  # the same step saved again (e.g. a rerun): the new one replaces it
        shutil.rmtree(final_dir)
    os.rename(tmp_dir, final_dir)
    pointer_tmp = os.path.join(save_dir, LATEST + TMP_SUFFIX)
    write_synced(pointer_tmp, os.path.basename(final_dir) + "\n")
    os.replace(pointer_tmp, os.path.join(save_dir, LATEST))
    sync_directory(save_dir)  # the renames themselves reach the disk
