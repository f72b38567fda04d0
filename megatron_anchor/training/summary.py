"""The start-up summary a run prints once (rank 0), read off the built model and datasets."""

from __future__ import annotations

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.utils.data import Dataset

from megatron_anchor.model.core_attention import cp_exchange
from megatron_anchor.training.metrics import peak_tflops, readable
from megatron_anchor.training.parallel import unwrapped_name


def parameter_count(model: torch.nn.Module, tp_names: set[str], tp: int) -> int:
    """Parameters of the whole model: a TP-split tensor counts ``tp`` times its shard, a replica once.

    FSDP2's parameters are DTensors, whose ``numel`` is already the unsharded size.
    """
    total = 0
    for name, param in model.named_parameters():
        split = unwrapped_name(name) in tp_names
        total += param.numel() * (tp if split else 1)
    return total


def distinct_samples(dataset: Dataset) -> int:
    """Samples of a split before repetition: the sum over a blend, a split's own count, else its length."""
    if hasattr(dataset, "datasets"):  # megatron-core's BlendedDataset
        return sum(distinct_samples(d) for d in dataset.datasets)
    counted = getattr(dataset, "distinct_samples", None)  # AnchorSplitDataset (packed or plain)
    return counted() if counted is not None else len(dataset)


def _data_line(run) -> str:
    args, data = run.args, run.data
    train = distinct_samples(data.train)
    needed = args.train_iters * args.global_batch_size
    line = (
        f"data: train split {train:,} samples ({readable(train * (args.seq_length + 1))} tokens); "
        f"{args.train_iters:,} steps read {needed:,} samples ({needed / max(train, 1):.2f} epochs)"
    )
    if data.valid is not None:
        line += f"; validation {distinct_samples(data.valid):,} samples"
    return line


def architecture_text(args) -> str:
    """The architecture in a few words: norm, MLP, biases, embeddings, dropout."""
    norm = args.normalization + ("-1p" if args.apply_layernorm_1p else "")
    mlp = "SwiGLU" if args.swiglu else "GeLU"
    bias = "qkv bias only" if args.add_qkv_bias else "no biases"
    bias = "linear biases" if args.add_bias_linear else bias
    tied = "untied" if args.untie_embeddings_and_output_weights else "tied"
    return f"{norm}, {mlp}, {bias}, {tied} embeddings, hidden dropout {args.hidden_dropout:g}"


def startup_summary(run, notes: list[str], config_path: str | None) -> str:
    """Parameters, shape, parallel layout, batch and data sizes, the MFU peak, notes, the config file."""
    args, dims, model = run.args, run.dims, run.raw_model
    params = parameter_count(model, run.tp_names, dims.tp)
    wrapped = sum(isinstance(m, CheckpointWrapper) for m in model.modules())
    recompute = args.recompute_granularity or "none"
    if recompute == "full":
        recompute += f" ({wrapped} of {args.num_layers} layers)"
    tokens_per_step = args.global_batch_size * args.seq_length
    wrapper = "FSDP2 (--use-distributed-optimizer)" if args.use_distributed_optimizer else "DDP"
    lines = [
        f"model: {readable(params)} parameters | {args.num_layers} layers, hidden {args.hidden_size}, "
        f"FFN {args.ffn_hidden_size}, {args.num_attention_heads} heads ({args.num_query_groups} KV), "
        f"vocab {model.vocab_size:,} padded | {architecture_text(args)} | attention {args.attention_mode}, "
        f"positions {args.position_ids} | {'bf16' if args.bf16 else 'fp32'}, recompute {recompute}",
        f"parallel: {dims.world} processes = TP {dims.tp} x CP {dims.cp} x DP {dims.dp} | {wrapper} | "
        f"{args.num_micro_batches} micro-batch(es) of {args.micro_batch_size} per DP rank and step"
        + (f" | CP attention: {cp_exchange(model)}" if dims.cp > 1 else ""),
        f"steps: {run.start_step:,} -> {args.train_iters:,} | {args.global_batch_size} samples x "
        f"{args.seq_length:,} = {readable(tokens_per_step)} tokens per step, "
        f"{readable(tokens_per_step * args.train_iters)} in all",
        _data_line(run),
        f"MFU: {peak_tflops(args.peak_tflops, args.bf16)[1]}",
        *[f"note: {n}" for n in notes],
    ]
    if config_path:
        lines.append(f"configuration: {config_path}")
    return "\n".join(lines)
