"""Evaluation set-up shared by the tools: the trainer's model flags, process groups, model and weights.

An evaluation takes the same model, RoPE and tokenizer flags as ``megatron_anchor.pretrain`` (Megatron's
names), so a trained checkpoint (``--load`` of the trainer's ``--save`` directory) or a converted Hugging
Face one is rebuilt with the flags it was trained or converted with.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from megatron_anchor.convert.checkpoint import CheckpointReader, load_model_weights
from megatron_anchor.parallel import free_port
from megatron_anchor.rope import add_rope_args, rope_scaling_from_args
from megatron_anchor.training import ParallelDims, init_distributed
from megatron_anchor.training.arguments import add_model_args
from megatron_anchor.training.build import build_model, build_model_config, resolve_vocab_size


def build_eval_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the trainer's model and RoPE flags plus tokenizer, parallel, precision and --load."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    add_rope_args(p)
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
    """Fill the derived model fields the trainer's validation would (ffn size, query groups, length)."""
    if args.tokenizer_model is None and args.vocab_size is None:
        raise ValueError("give --tokenizer-type/--tokenizer-model or --vocab-size")
    if args.hidden_size % args.num_attention_heads:
        heads = args.num_attention_heads
        raise ValueError(f"--hidden-size {args.hidden_size} not divisible by --num-attention-heads {heads}")
    args.ffn_hidden_size = args.ffn_hidden_size or 4 * args.hidden_size
    args.num_query_groups = args.num_query_groups or args.num_attention_heads
    args.seq_length = seq_length
    return args


def init_eval_distributed(tp: int, cp: int) -> ParallelDims:
    """Process groups for an evaluation: torchrun's, or a one-process group when run as plain python."""
    if "RANK" not in os.environ:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), RANK="0", WORLD_SIZE="1")
    return init_distributed(tp, cp)


def flags_differing_from_checkpoint(args: argparse.Namespace, meta: dict) -> list[str]:
    """Model and RoPE flags whose value differs from the ``model``/``rope`` sections a converted
    checkpoint records (trainer flag names); unset values and unknown names are not compared."""
    recorded = {**meta.get("model", {}), **meta.get("rope", {})}
    differing = []
    for name, saved in recorded.items():
        given = getattr(args, name, None)
        if name == "rope_scaling":
            scaling = rope_scaling_from_args(args)
            given = None if scaling is None else scaling.to_dict()
        elif given is None or saved is None:
            continue
        if given != saved:
            differing.append(f"--{name.replace('_', '-')} {given} (checkpoint: {saved})")
    return differing


def load_weights(
    load_dir: str, model: torch.nn.Module, dims: ParallelDims, args: argparse.Namespace | None = None
) -> str:
    """Restore only the model weights of the checkpoint under ``load_dir`` (trained or converted); returns
    its path. No optimizer is built: evaluation needs none, and a large model cannot spare its memory.
    With ``args``, flags that differ from what a converted checkpoint records are reported."""
    reader = CheckpointReader(load_dir)  # resolves ``latest``; a clear error when there is no checkpoint
    if reader.tp != dims.tp:
        raise ValueError(
            f"checkpoint {reader.path} holds --tensor-model-parallel-size {reader.tp} shards; "
            f"this run uses {dims.tp} (convert it again at that TP size)"
        )
    load_model_weights(reader.path, model, dims.tp_rank)
    differing = flags_differing_from_checkpoint(args, reader.meta) if args is not None else []
    if differing and dims.rank == 0:
        # Not an error: evaluating a converted model under another RoPE (e.g. a new base) is legitimate.
        print(f"note: flags differ from checkpoint {reader.path}: {'; '.join(differing)}", flush=True)
    return reader.path


def build_eval_model(args: argparse.Namespace, dims: ParallelDims, device: torch.device) -> torch.nn.Module:
    """The model of ``args`` in eval mode: random init from ``--seed``, then ``--load`` weights if given."""
    cfg = build_model_config(args, resolve_vocab_size(args))
    model = build_model(cfg, dims, device, args.seed)
    if args.load:
        path = load_weights(args.load, model, dims, args)
        if dims.rank == 0:
            print(f"loaded model weights from {path}", flush=True)
    return model.eval()


def gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits ``[..., v]`` from this TP rank's ``[..., v/tp]`` shard."""
    tp = ps.get_tensor_model_parallel_world_size()
    if tp == 1:
        return logits
    shards = [torch.empty_like(logits) for _ in range(tp)]
    dist.all_gather(shards, logits.contiguous(), group=ps.get_tensor_model_parallel_group())
    return torch.cat(shards, dim=-1)
