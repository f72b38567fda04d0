"""Sharded training checkpoints with torch.distributed.checkpoint (DCP), written atomically and verified.

Layout of ``--save DIR`` (``megatron_anchor.checkpoint``): ``iter_0000100/`` (DCP shards, ``meta.json``,
``rng/rank*.pt``), ``latest`` and Megatron-LM's ``latest_checkpointed_iteration.txt`` naming the newest
complete one, and ``run.lock`` while a run writes there (``lock_save_dir``: a second run is refused).
A checkpoint is written into ``iter_*.tmp``, each rank checksums the files it wrote, and rank 0 records them
in ``meta.json`` before the rename; the pointers are then replaced atomically. A failed save (full disk,
quota) raises on every rank with the path, the errno and the free space, leaving ``latest`` on the previous
checkpoint. DCP reshards on load: the same checkpoint loads under another DP or CP size, with DDP or FSDP2;
TP shards need the same TP size.
"""

from __future__ import annotations

import argparse
import os
import random
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from megatron_anchor._output_lock import OutputLock, OutputLockedError
from megatron_anchor.checkpoint import (
    EXTRA_STATE,
    LATEST,
    LOCK_FILE,
    TMP_SUFFIX,
    CheckpointError,
    PlainDataLoadPlanner,
    checkpoint_files,
    checkpoint_meta,
    commit_checkpoint,
    dcp_failure,
    describe_files,
    iter_dir_name,
    load_verified_weights,
    read_meta,
    remove_stale_tmp,
    weights_only_refusal,
    write_failure_detail,
    write_meta,
)
from megatron_anchor.model import AnchorGPTConfig
from megatron_anchor.model.config_record import config_record
from megatron_anchor.training.checkpoint_args import schedule_record
from megatron_anchor.training.parallel import ParallelDims
from megatron_anchor.training.vocab import tokenizer_record

# Facts about a converted source model that its trained descendants keep (export needs them).
_LINEAGE = ("hf_config", "converted_from")


def run_meta(args: argparse.Namespace, cfg: AnchorGPTConfig, vocab_size: int, dims: ParallelDims) -> dict:
    """The ``meta.json`` of this run's checkpoints (``step``, ``consumed_samples`` and ``files`` are set per
    save): its model, tokenizer, schedule and parallel sizes, and the lineage of a converted ``--load``."""
    record = config_record(
        cfg,
        vocab_size=vocab_size,
        make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
        position_ids=args.position_ids,
    )
    source = read_meta(args.load_checkpoint) if args.load_checkpoint else {}
    architecture = source.get("model", {}).get("architecture")
    if architecture:
        record["model"] = {"architecture": architecture, **record["model"]}
    return checkpoint_meta(
        step=0,
        consumed_samples=0,
        record=record,
        tokenizer=tokenizer_record(args, vocab_size),
        schedule=schedule_record(args),
        sizes={"tp": dims.tp, "cp": dims.cp, "dp": dims.dp, "world": dims.world},
        weights_only=False,
        **{k: source[k] for k in _LINEAGE if k in source},
    )


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


# What numpy's RNG state pickles as, besides torch's own types: the only globals read_rng_state accepts. The
# arrays' rebuild function under numpy 1's name and numpy 2's, so a resume after an upgrade reads the files.
_NUMPY_STATE_GLOBALS = [
    *((np.empty(0).__reduce__()[0], f"numpy.{core}.multiarray._reconstruct") for core in ("core", "_core")),
    np.ndarray, np.dtype, type(np.dtype(np.uint32)),
]  # fmt: skip


def read_rng_state(path: str) -> dict:
    """The RNG states of ``rng/rank*.pt``, read with torch's weights-only unpickler (a crafted file builds
    nothing but tensors, numbers and numpy arrays); CheckpointError naming the file otherwise."""
    try:
        with torch.serialization.safe_globals(_NUMPY_STATE_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zipfile and torch fail alike on a file that is not an RNG state
        raise CheckpointError(f"{path}: not a readable RNG state ({weights_only_refusal(err)})") from None
    if not isinstance(state, dict) or not {"torch", "python", "numpy"} <= state.keys():
        raise CheckpointError(f"{path}: not an RNG state (a dict of torch, python and numpy states)")
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _on_every_rank(fn: Callable[[], object], what: str, path: str) -> list:
    """Run ``fn`` on this rank and gather the results; if any rank raised OSError, raise CheckpointError
    on every rank (no rank is left waiting in a later collective)."""
    result, error = None, None
    try:
        result = fn()
    except OSError as err:
        error = f"{what} {path} failed on rank {dist.get_rank()}: {write_failure_detail(err, path)}"
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, (result, error))
    errors = [e for _, e in gathered if e]
    if errors:
        raise CheckpointError(errors[0] + f"; '{LATEST}' still names the previous checkpoint")
    return [r for r, _ in gathered]


def _dcp_error(err: CheckpointException, path: str) -> CheckpointError:
    """The first rank's failure inside DCP as one line (with an errno and the free space)."""
    return CheckpointError(f"{dcp_failure(err, path)}; '{LATEST}' still names the previous checkpoint")


def save_checkpoint(save_dir: str, step: int, model, optimizer, dims: ParallelDims, meta: dict) -> str:
    """Write the checkpoint after ``step`` optimizer steps; returns its directory (collective).

    ``meta``: the run's ``meta.json`` contents (``run_meta``); the step, consumed samples, parallel sizes
    and ``files`` (size and CRC-32 of every file) are set here. ``optimizer`` None (Megatron's
    ``--no-save-optim``): the model alone, recorded as ``optimizer_saved: false``.
    """
    final = os.path.join(save_dir, iter_dir_name(step))
    tmp = final + TMP_SUFFIX

    def prepare() -> None:
        if dims.rank == 0:
            remove_stale_tmp(save_dir)  # interrupted saves, this step's included
            os.makedirs(os.path.join(tmp, "rng"))

    _on_every_rank(prepare, "creating checkpoint", tmp)
    msd = {k: v for k, v in get_model_state_dict(model).items() if not k.endswith(EXTRA_STATE)}
    state = {f"tp{dims.tp_rank}": {"model": msd}}
    if optimizer is not None:
        state[f"tp{dims.tp_rank}"]["optim"] = get_optimizer_state_dict(model, optimizer)
    try:
        dcp.save(state, checkpoint_id=tmp)
    except CheckpointException as err:
        raise _dcp_error(err, tmp) from None

    def write_rng_and_checksum() -> dict:
        rng = os.path.join("rng", f"rank{dims.rank}.pt")
        torch.save(_rng_state(), os.path.join(tmp, rng))
        mine = [n for n in checkpoint_files(tmp) if n.startswith(f"__{dims.rank}_")]  # DCP's per-rank files
        return describe_files(tmp, [*mine, rng])

    manifests = _on_every_rank(write_rng_and_checksum, "writing checkpoint", tmp)

    def commit() -> None:
        if dims.rank != 0:
            return
        files = {k: v for part in manifests for k, v in part.items()}
        rest = [n for n in checkpoint_files(tmp) if n not in files]  # e.g. DCP's .metadata
        files.update(describe_files(tmp, rest))
        consumed = step * meta["schedule"]["global_batch_size"] if meta.get("schedule") else None
        sizes = {"tp": dims.tp, "cp": dims.cp, "dp": dims.dp, "world": dims.world}
        final_meta = dict(meta, step=step, consumed_samples=consumed, **sizes)
        if optimizer is None:
            final_meta["optimizer_saved"] = False
        write_meta(tmp, dict(final_meta, files=dict(sorted(files.items()))))
        commit_checkpoint(tmp, final)

    _on_every_rank(commit, "committing checkpoint", final)
    return final


def load_checkpoint(
    path: str,
    model,
    optimizer,
    dims: ParallelDims,
    *,
    load_optim: bool = True,
    load_rng: bool = True,
    weights_loaded: bool = False,
) -> dict:
    """Verify checkpoint ``path`` and restore the model (unless ``weights_loaded``: already done before the
    model was wrapped), then (unless told not to, and unless the checkpoint holds weights only) the
    optimizer and, at the same world size, the RNG states. Returns its meta with ``rng_restored`` added
    (collective)."""
    meta = read_meta(path) if weights_loaded else load_verified_weights(path, model, dims.tp, dims.tp_rank)
    full = not meta.get("weights_only")
    if full and load_optim and meta.get("optimizer_saved") is False:
        raise CheckpointError(f"{path} holds no optimizer state (--no-save-optim): add --no-load-optim")
    if full and load_optim:
        osd = get_optimizer_state_dict(model, optimizer)
        try:
            state, planner = {f"tp{dims.tp_rank}": {"optim": osd}}, PlainDataLoadPlanner()
            dcp.load(state, checkpoint_id=path, planner=planner)
        except CheckpointException as err:
            rank, (exc, _) = min(err.failures.items())
            raise CheckpointError(
                f"reading the optimizer state of checkpoint {path} failed on rank {rank}: {exc}"
            ) from None
        set_optimizer_state_dict(model, optimizer, osd)
    rng_file = os.path.join(path, "rng", f"rank{dims.rank}.pt")
    # Per-rank RNG streams only map one-to-one at the same world size; otherwise they stay from --seed.
    meta["rng_restored"] = full and load_rng and meta["world"] == dims.world and os.path.isfile(rng_file)
    if meta["rng_restored"]:
        _set_rng_state(read_rng_state(rng_file))
    return meta


def lock_save_dir(save_dir: str, dims: ParallelDims) -> OutputLock | None:
    """Create ``save_dir`` and hold ``save_dir/run.lock`` on rank 0 for the run's life (collective): a run
    already writing there makes every rank raise CheckpointError naming its host and pid. Prints a note
    when taking over the lock of a run that ended without releasing it. Returns rank 0's lock."""
    lock, error = None, None
    if dims.rank == 0:
        try:
            os.makedirs(save_dir, exist_ok=True)
            lock = OutputLock(os.path.join(save_dir, LOCK_FILE), "--save")
        except OutputLockedError as err:
            error = str(err)
        except OSError as err:
            error = f"--save {save_dir}: {write_failure_detail(err, save_dir)}"
    outcome = [error]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None:
        raise CheckpointError(outcome[0])
    if lock is not None and lock.taken_over:
        print(f"note: {lock.taken_over}", flush=True)
    return lock
