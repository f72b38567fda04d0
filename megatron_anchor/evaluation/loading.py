"""Evaluation set-up shared by the tools: process groups, the model and its weights (the flags are resolved by
``eval_args``)."""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_anchor.checkpoint import CheckpointError, load_verified_weights
from megatron_anchor.parallel import free_port
from megatron_anchor.training import ParallelDims, init_distributed
from megatron_anchor.training.build import build_model, build_model_config
from megatron_anchor.training.vocab import resolve_vocab_size


def init_eval_distributed(tp: int, cp: int) -> ParallelDims:
    """Process groups for an evaluation: torchrun's, or a one-process group when run as plain python."""
    if "RANK" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    return init_distributed(tp, cp)


def load_weights(load_dir: str, model: torch.nn.Module, dims: ParallelDims) -> None:
    """Restore only the model weights of checkpoint ``load_dir`` (a resolved checkpoint directory: this
    project's, checksums verified, or Megatron-LM's), collectively. No optimizer is built: evaluation needs
    none, and a large model cannot spare its memory."""
    try:
        load_verified_weights(load_dir, model, dims.tp, dims.tp_rank)
    except CheckpointError as err:  # a damaged or edited checkpoint: one line (each rank checks its files)
        where = f"rank {dims.rank}: " if dims.world > 1 else ""
        raise SystemExit(f"error: {where}{err}") from None


def build_eval_model(args: argparse.Namespace, dims: ParallelDims, device: torch.device) -> torch.nn.Module:
    """The model of ``args`` in eval mode: random init from ``--seed``, then ``--load`` weights if given."""
    if dims.rank == 0:
        for note in getattr(args, "checkpoint_notes", []):
            print(f"note: {note}", flush=True)
    cfg = build_model_config(args, resolve_vocab_size(args))
    model = build_model(cfg, dims, device, args.seed)
    if args.load_checkpoint:
        load_weights(args.load_checkpoint, model, dims)
        if dims.rank == 0:
            print(f"loaded model weights from {args.load_checkpoint}", flush=True)
    return model.eval()


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits ``[..., v]`` from this TP rank's ``[..., v/tp]`` shard."""
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return logits
    shards = [torch.empty_like(logits) for _ in range(tp)]
    dist.all_gather(shards, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(shards, dim=-1)
