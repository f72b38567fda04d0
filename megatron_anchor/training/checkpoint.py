"""Sharded checkpoints with torch.distributed.checkpoint (DCP), written atomically.

Layout of ``--save DIR``: ``iter_0000100/`` (DCP shards, ``meta.json``, ``rng/rank*.pt``) and a ``latest``
file naming the newest complete one. A checkpoint is written into ``iter_*.tmp`` and renamed only after
every rank finished, then ``latest`` is replaced atomically, so a crash never leaves a half-written
checkpoint behind ``latest``. DCP reshards on load: the same checkpoint loads under another DP size or
another CP size (weights are replicated across CP), with DDP or FSDP2. TP shards are stored per TP rank and
need the same TP size.
"""

from __future__ import annotations

import json
import os
import random
import shutil

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from megatron_anchor.training.parallel import ParallelDims

LATEST = "latest"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _app_state(model, optimizer, dims: ParallelDims) -> tuple[dict, dict, dict]:
    """DCP state keyed by TP rank (TP shards differ under equal names); returns (state, msd, osd)."""
    msd, osd = get_state_dict(model, optimizer)
    # megatron-core's linear layers expose an ``_extra_state`` entry (None without FP8); DCP drops None
    # values on save, so the entry is left out of both save and load (which DCP checks key by key).
    msd = {k: v for k, v in msd.items() if not k.endswith("_extra_state")}
    return {f"tp{dims.tp_rank}": {"model": msd, "optim": osd}}, msd, osd


def save_checkpoint(save_dir: str, step: int, model, optimizer, dims: ParallelDims, meta: dict) -> str:
    """Write the checkpoint after ``step`` optimizer steps; returns its directory (collective)."""
    final = os.path.join(save_dir, f"iter_{step:07d}")
    tmp = final + ".tmp"
    if dims.rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # leftovers of an interrupted save
        os.makedirs(os.path.join(tmp, "rng"))
    dist.barrier()
    state, _, _ = _app_state(model, optimizer, dims)
    dcp.save(state, checkpoint_id=tmp)
    torch.save(_rng_state(), os.path.join(tmp, "rng", f"rank{dims.rank}.pt"))
    dist.barrier()
    if dims.rank == 0:
        full_meta = dict(meta, step=step, tp=dims.tp, cp=dims.cp, dp=dims.dp, world=dims.world)
        with open(os.path.join(tmp, "meta.json"), "w") as f:
            json.dump(full_meta, f, indent=1, default=str)
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        pointer = os.path.join(save_dir, LATEST + ".tmp")
        with open(pointer, "w") as f:
            f.write(os.path.basename(final) + "\n")
        os.replace(pointer, os.path.join(save_dir, LATEST))
    dist.barrier()
    return final


def find_checkpoint(load_dir: str) -> str | None:
    """The directory to resume from: ``load_dir`` itself if it is one, else what ``latest`` names."""
    if os.path.isfile(os.path.join(load_dir, "meta.json")):
        return load_dir
    pointer = os.path.join(load_dir, LATEST)
    if not os.path.isfile(pointer):
        return None
    with open(pointer) as f:
        path = os.path.join(load_dir, f.read().strip())
    if not os.path.isfile(os.path.join(path, "meta.json")):
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def load_checkpoint(path: str, model, optimizer, dims: ParallelDims) -> dict:
    """Restore model, optimizer and (at the same world size) RNG from ``path``; returns its meta.

    A weights-only checkpoint (``meta["weights_only"]``, as the Hugging Face importer writes) restores
    the model alone, and the run starts at its step (0).
    """
    with open(os.path.join(path, "meta.json")) as f:
        meta = json.load(f)
    if meta["tp"] != dims.tp:
        raise ValueError(
            f"checkpoint {path} was saved with --tensor-model-parallel-size {meta['tp']}; "
            f"this run uses {dims.tp} (TP resharding is not supported)"
        )
    if meta.get("weights_only"):  # e.g. converted from Hugging Face: weights, no optimizer/RNG, step 0
        from megatron_anchor.convert.checkpoint import load_model_weights

        load_model_weights(path, model, dims.tp_rank)
        meta["rng_restored"] = False
        return meta
    state, msd, osd = _app_state(model, optimizer, dims)
    dcp.load(state, checkpoint_id=path)
    set_state_dict(
        model, optimizer, model_state_dict=msd, optim_state_dict=osd, options=StateDictOptions(strict=False)
    )  # strict only about the _extra_state entries
    rng_file = os.path.join(path, "rng", f"rank{dims.rank}.pt")
    # Per-rank RNG streams only map one-to-one at the same world size; otherwise they are reseeded.
    meta["rng_restored"] = meta["world"] == dims.world and os.path.isfile(rng_file)
    if meta["rng_restored"]:
        _set_rng_state(torch.load(rng_file, weights_only=False))
    return meta
