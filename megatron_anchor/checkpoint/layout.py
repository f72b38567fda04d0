"""Where checkpoints live on disk: ``DIR/iter_NNNNNNN/`` directories, the pointers to the newest one, atomic
commits, the lock of a run writing ``DIR``.

A checkpoint is written into ``iter_NNNNNNN.tmp`` and renamed once complete; the pointers are then replaced
atomically: ``latest`` (this project's, ``iter_NNNNNNN``) and Megatron-LM's
``latest_checkpointed_iteration.txt`` (the bare iteration number, or ``release``), so neither names a
half-written checkpoint and either is read. An existing ``iter_*`` is never replaced. A ``.tmp`` left by a
crash or a full disk is removed by the next save into the same directory.

A directory is a checkpoint when it holds ``meta.json`` (this project's) or is a Megatron-LM ``torch_dist``
checkpoint (megatron-core ``dist_checkpointing``: ``metadata.json`` and ``common.pt``; see ``megatron``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil

from megatron_anchor._files import sync_directory, write_synced

LATEST = "latest"
MEGATRON_TRACKER = "latest_checkpointed_iteration.txt"
META_FILE = "meta.json"
LOCK_FILE = "run.lock"
# Names the checkpoint a save is committing, from before its rename until both pointers name it: a crash in
# between leaves it, telling that window apart from a pointer rolled back by hand.
COMMIT_MARKER = "commit.pending"
TMP_SUFFIX = ".tmp"
# megatron-core dist_checkpointing's files (megatron/core/dist_checkpointing/core.py CONFIG_FNAME and
# strategies/common.py COMMON_STATE_FNAME, core_v0.16.0).
MEGATRON_CONFIG = "metadata.json"
MEGATRON_COMMON = "common.pt"
# Megatron-LM's --ckpt-format torch: one file per model-parallel rank (megatron/training/checkpointing.py
# get_checkpoint_name, core_v0.16.1); its --ckpt-convert-format/--ckpt-convert-save rewrite it as torch_dist.
MEGATRON_TORCH_FILES = os.path.join("mp_rank_*", "model_optim_rng.pt")
MEGATRON_TORCH_FORMAT = (
    "is a Megatron-LM --ckpt-format torch checkpoint (mp_rank_*/model_optim_rng.pt), and only torch_dist "
    "ones are read: convert it with Megatron-LM's training script (--ckpt-convert-format torch_dist "
    "--ckpt-convert-save DIR), then give DIR/torch_dist"
)
_ITER_RE = re.compile(r"^iter_(\d{7,})$")
_RELEASE = "release"  # Megatron-LM's name for a checkpoint without an iteration (its tracker says so too)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as asked; the message names the file, directory or flag."""


def iter_dir_name(step: int) -> str:
    """``iter_0000020`` for step 20."""
    return f"iter_{step:07d}"


def is_megatron_checkpoint(path: str) -> bool:
    """Whether ``path`` is a Megatron-LM ``torch_dist`` checkpoint directory (and not this project's)."""
    files = (MEGATRON_CONFIG, MEGATRON_COMMON)
    return all(os.path.isfile(os.path.join(path, f)) for f in files) and not _has_meta(path)


def _has_meta(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META_FILE))


def is_checkpoint(path: str) -> bool:
    """Whether ``path`` is a complete checkpoint directory (``meta.json``, or a Megatron-LM one)."""
    return _has_meta(path) or is_megatron_checkpoint(path)


def _pointer_target(pointer: str) -> str:
    """The checkpoint directory name in a pointer file; CheckpointError naming the file if it holds none."""
    with open(pointer, "rb") as f:
        raw = f.read(256)
    example = iter_dir_name(10)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CheckpointError(
            f"{pointer} is damaged (it holds binary data, not a checkpoint name such as {example}): "
            f"give --load one of the directory's iter_* checkpoints"
        ) from None
    if os.path.basename(pointer) == MEGATRON_TRACKER:  # Megatron-LM writes str(iteration) or "release"
        if text.isdigit():
            return iter_dir_name(int(text))
        if text == _RELEASE:
            return _RELEASE
    elif _ITER_RE.match(text):
        return text
    raise CheckpointError(f"{pointer} holds {text[:40]!r}, not a checkpoint name such as {example}")


def read_pointer(directory: str) -> tuple[str, str] | None:
    """``(pointer file, checkpoint directory it names)`` from ``latest`` or Megatron-LM's tracker, or None
    when ``directory`` has neither. When both exist, the one naming a complete checkpoint (the newer if both).
    CheckpointError for a damaged pointer."""
    found = [
        (pointer, os.path.join(directory, _pointer_target(pointer)))
        for pointer in (os.path.join(directory, n) for n in (LATEST, MEGATRON_TRACKER))
        if os.path.isfile(pointer)
    ]
    if not found:
        return None
    # They differ after a crash between the two replacements in commit_checkpoint (the newer is right), or
    # when one was edited by hand or a checkpoint removed (the one still naming a checkpoint is right).
    complete = [item for item in found if is_checkpoint(item[1])]
    return max(complete or found, key=lambda item: _step_of(os.path.basename(item[1])) or 0)


def find_checkpoint(path: str, notes: list[str] | None = None) -> str | None:
    """``path`` itself if it is a checkpoint, else the one its pointer names, else None. A complete
    checkpoint newer than the pointer's target wins (noted in ``notes``) when the commit marker names it: a
    save stopped between its rename and its pointer writes (a pointer rolled back by hand is followed).
    CheckpointError when the pointer names an incomplete checkpoint newer than all complete ones."""
    if is_checkpoint(path):
        return path
    pointed = read_pointer(path) if os.path.isdir(path) else None
    if pointed is None:
        return None
    pointer, found = pointed
    newest, step = newest_checkpoint(path), _step_of(os.path.basename(found))
    if newest is not None and step is not None and step_of_checkpoint(newest) > step and _committing(newest):
        if notes is not None:
            notes.append(
                f"{pointer} names {os.path.basename(found)}, but the newer {newest} is complete (its save "
                f"stopped before the pointers were written): taking {newest}"
            )
        return newest
    if not is_checkpoint(found):
        why = MEGATRON_TORCH_FORMAT if _is_megatron_torch_format(found) else "is not a complete checkpoint"
        raise CheckpointError(f"{pointer} names {found}, which {why}")
    return found


def pointer_problem(directory: str) -> str | None:
    """Why a save could not write its pointers in ``directory`` (a directory or another non-file where a
    pointer or the commit marker goes), or None."""
    for name in (LATEST, MEGATRON_TRACKER, COMMIT_MARKER):
        path = os.path.join(directory, name)
        if os.path.lexists(path) and not os.path.isfile(path):
            return f"{path} is not a file: every save writes it, so remove or rename it first"
    return None


def _committing(checkpoint_dir: str) -> bool:
    """Whether the commit marker beside ``checkpoint_dir`` names it (its save stopped before the pointers)."""
    marker = os.path.join(os.path.dirname(checkpoint_dir), COMMIT_MARKER)
    try:
        with open(marker, encoding="ascii", errors="replace") as f:
            return f.read(256).strip() == os.path.basename(checkpoint_dir)
    except FileNotFoundError:
        return False


def _is_megatron_torch_format(path: str) -> bool:
    return bool(glob.glob(os.path.join(glob.escape(path), MEGATRON_TORCH_FILES)))


def newest_checkpoint(directory: str) -> str | None:
    """The complete ``iter_*`` checkpoint of ``directory`` with the largest step, or None."""
    steps = complete_steps(directory) if os.path.isdir(directory) else []
    return os.path.join(directory, steps[-1][1]) if steps else None


def step_of_checkpoint(checkpoint_dir: str) -> int | None:
    """The step in the name of checkpoint directory ``iter_NNNNNNN`` (None for another name)."""
    return _step_of(os.path.basename(os.path.normpath(checkpoint_dir)))


def why_not_a_checkpoint(path: str) -> str:
    """A short reason why ``path`` holds no checkpoint, with the likely fix."""
    if not os.path.exists(path):
        return "does not exist"
    if not os.path.isdir(path):
        return "is a file, not a checkpoint directory"
    if _is_megatron_torch_format(path):
        return MEGATRON_TORCH_FORMAT
    if os.path.isfile(os.path.join(path, "config.json")):
        return (
            "is a Hugging Face model directory, not a checkpoint: convert it first with "
            "tools/convert_hf_checkpoint.py import"
        )
    steps = complete_steps(path)
    if steps:
        return f"has no '{LATEST}' file; give one of its checkpoints, e.g. {os.path.join(path, steps[-1][1])}"
    return f"holds neither {META_FILE} nor a '{LATEST}' (or {MEGATRON_TRACKER}) file"


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
    """The checkpoint's ``meta.json`` (a fresh dict each call; the file is read again only if it changed);
    for a Megatron-LM checkpoint, the same contents taken from its ``common.pt`` (``megatron_meta``)."""
    if is_megatron_checkpoint(checkpoint_dir):
        from megatron_anchor.checkpoint.megatron import megatron_meta  # torch: only for Megatron-LM's

        return megatron_meta(checkpoint_dir)
    path = os.path.join(checkpoint_dir, META_FILE)
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_size)
    if key not in _META_TEXT:
        with open(path, "rb") as f:
            _META_TEXT[key] = f.read().decode(errors="replace")
    try:
        meta = json.loads(_META_TEXT[key])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON (line {err.lineno}): {err.msg}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: not a checkpoint description (a JSON object is expected)")
    from megatron_anchor.checkpoint.meta import meta_problem  # layout stays free of the tokenizers' imports

    problem = meta_problem(meta)
    if problem:
        raise CheckpointError(f"{path}: {problem} (was it edited?)")
    return meta


def check_tp_size(meta: dict, where: str, tp: int) -> None:
    """ValueError unless the checkpoint of ``meta`` (named ``where`` in the message) has TP size ``tp``."""
    if meta.get("tp") is None:
        return  # a Megatron-LM checkpoint: megatron-core's loader reshards it to any TP size
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
    """Move the complete ``tmp_dir`` to ``final_dir`` and point ``latest`` and Megatron-LM's tracker at it
    (each step atomic). CheckpointError if ``final_dir`` exists: a checkpoint is never overwritten."""
    save_dir = os.path.dirname(final_dir)
    if os.path.exists(final_dir):
        raise CheckpointError(
            f"{final_dir} already exists: a checkpoint is never overwritten (is another run writing to "
            f"{save_dir}?); {tmp_dir} is kept and removed by the next save"
        )
    name = os.path.basename(final_dir)
    marker = os.path.join(save_dir, COMMIT_MARKER)
    write_synced(marker, name + "\n")
    os.rename(tmp_dir, final_dir)
    for pointer, text in ((LATEST, name + "\n"), (MEGATRON_TRACKER, str(_step_of(name)))):
        pointer_tmp = os.path.join(save_dir, pointer + TMP_SUFFIX)
        write_synced(pointer_tmp, text)
        os.replace(pointer_tmp, os.path.join(save_dir, pointer))
    sync_directory(save_dir)  # the renames themselves reach the disk
    os.remove(marker)
