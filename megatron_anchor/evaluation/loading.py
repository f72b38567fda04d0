"""Evaluation set-up shared by the tools: the trainer's model flags, process groups, model and weights.

An evaluation takes the same model, RoPE and tokenizer flags as ``megatron_anchor.pretrain`` (Megatron's
names) and resolves them by the trainer's rule: flags left out are taken from the ``--load`` checkpoint
(trained or converted), a flag contradicting its shape is an error, a new RoPE is reported on one line.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_anchor.checkpoint import load_verified_weights
from megatron_anchor.parallel import free_port
from megatron_anchor.training import ParallelDims, init_distributed
from megatron_anchor.training.build import build_model, build_model_config
from megatron_anchor.training.checkpoint_args import resolve_model_config
from megatron_anchor.training.model_args import add_model_args
from megatron_anchor.training.vocab import resolve_vocab_size


def build_eval_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the trainer's model and RoPE flags plus tokenizer, parallel, precision and --load."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    g = p.add_argument_group("model source")
    g.add_argument(
        "--load",
        default=None,
        help="checkpoint directory (trainer --save or converted); default: random initialisation from --seed",
    )
    g.add_argument("--tokenizer-type", default=None)
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--vocab-size", type=int, default=None, help="vocabulary size without a tokenizer")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)
    return p


def finish_model_args(args: argparse.Namespace, seq_length: int) -> argparse.Namespace:
    """Resolve and validate the model flags as the trainer does (``--load``'s metadata fills the flags left
    out); sets ``args.seq_length`` and ``args.checkpoint_notes``. Raises ValueError naming the flag."""
    args.seq_length = seq_length
    args.checkpoint_notes = resolve_model_config(args, args.tensor_model_parallel_size)
    if args.tokenizer_model is None and args.vocab_size is None:
        raise ValueError("give --tokenizer-type/--tokenizer-model or --vocab-size (or --load a checkpoint)")
    return args


def init_eval_distributed(tp: int, cp: int) -> ParallelDims:
    """Process groups for an evaluation: torchrun's, or a one-process group when run as plain python."""
    if "RANK" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    return init_distributed(tp, cp)


def load_weights(load_dir: str, model: torch.nn.Module, dims: ParallelDims) -> None:
    """Restore only the model weights of checkpoint ``load_dir`` (a resolved checkpoint directory: this
    project's, checksums verified, or Megatron-LM's), collectively. No optimizer is built: evaluation needs
    none, and a large model cannot spare its memory."""
    load_verified_weights(load_dir, model, dims.tp, dims.tp_rank)


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
