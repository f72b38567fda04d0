"""The training loop: one step reads top to bottom (micro-batches, global-token loss, clip, step, log)."""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from megatron_anchor.training.batches import micro_batches, rank_sample_indices
from megatron_anchor.training.build import (
    Datasets,
    build_datasets,
    build_model,
    build_model_config,
    build_optimizer,
    model_dense_params,
    resolve_vocab_size,
    tokenizer_vocab_size,
)
from megatron_anchor.training.checkpoint import load_checkpoint, run_meta, save_checkpoint
from megatron_anchor.training.exit_conditions import ExitConditions
from megatron_anchor.training.metrics import StepLogger, peak_memory_gib, step_flops, visible_pairs
from megatron_anchor.training.parallel import (
    ParallelDims,
    clip_grad_norm_,
    device_for_rank,
    gradient_sync,
    parallelize,
    tensor_parallel_param_names,
)
from megatron_anchor.training.schedule import get_lr


@dataclass
class Run:
    """Everything the loop uses, built once by ``build_run``."""

    args: argparse.Namespace
    dims: ParallelDims
    device: torch.device
    raw_model: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    tp_names: set[str]
    data: Datasets
    dense_params: int
    meta: dict
    """The ``meta.json`` of this run's checkpoints (``run_meta``)."""
    exits: ExitConditions
    start_step: int = 0


def build_run(args: argparse.Namespace, dims: ParallelDims) -> Run:
    """Model, wrapping, optimizer, data; then the ``--load`` checkpoint (resolved by ``validate_args``)."""
    exits = ExitConditions(args)
    exits.install()  # a SIGTERM during set-up is acted on after the first step
    device = device_for_rank()
    vocab = tokenizer_vocab_size(args)
    cfg = build_model_config(args, resolve_vocab_size(args, vocab))
    raw = build_model(cfg, dims, device, args.seed)
    tp_names = tensor_parallel_param_names(raw)
    model = parallelize(
        raw,
        dims,
        recompute_full=args.recompute_granularity == "full",
        distributed_optimizer=args.use_distributed_optimizer,
    )
    run = Run(
        args,
        dims,
        device,
        raw,
        model,
        build_optimizer(model, args),
        tp_names,
        build_datasets(args, cfg.vocab_size),
        model_dense_params(cfg),
        run_meta(args, cfg, vocab, dims),
        exits,
    )
    if dims.rank == 0:
        for note in args.checkpoint_notes:
            print(f"note: {note}", flush=True)
    if args.load_checkpoint is not None:
        _resume(run, args.load_checkpoint)
    return run


def _resume(run: Run, path: str) -> None:
    args = run.args
    meta = load_checkpoint(
        path,
        run.model,
        run.optimizer,
        run.dims,
        load_optim=not (args.finetune or args.no_load_optim),
        load_rng=not (args.finetune or args.no_load_rng),
    )
    run.start_step = 0 if args.finetune else meta["step"]
    if run.dims.rank == 0:
        what = "model weights only (--finetune)" if args.finetune else "model and optimizer"
        if meta.get("weights_only"):
            what = "model weights (a weights-only checkpoint)"
        elif args.no_load_optim and not args.finetune:
            what = "model only (--no-load-optim)"
        rng = "restored" if meta["rng_restored"] else "from --seed"
        unverified = "" if "files" in meta else "; files not verified (no checksums recorded)"
        print(f"resumed from {path} at step {run.start_step}: {what}; RNG {rng}{unverified}", flush=True)


def _all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(t, group=group)
    return t


def _autocast(run: Run):
    if not run.args.bf16:
        return contextlib.nullcontext()
    return torch.autocast(run.device.type, dtype=torch.bfloat16)


def _stop_if_not_finite(run: Run, loss: float, grad_norm: float, local_sum: torch.Tensor, step: int) -> None:
    """Raise on every rank (nothing is saved) naming the step and the ranks whose loss went bad."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    flags = [torch.zeros(1, device=run.device) for _ in range(dist.get_world_size())]
    bad_here = 0.0 if torch.isfinite(local_sum).item() else 1.0
    dist.all_gather(flags, torch.tensor([bad_here], device=run.device))
    bad = [r for r, f in enumerate(flags) if f.item()] or "none (non-finite gradients)"
    raise FloatingPointError(
        f"non-finite loss {loss} / grad norm {grad_norm} at step {step + 1} on rank {run.dims.rank}; "
        f"ranks with a non-finite local loss: {bad}. Stopped before the optimizer step; nothing saved."
    )


def train_step(run: Run, step: int) -> dict:
    """One optimizer step on global batch ``step``; returns loss, grad_norm, lr and the batch's counts."""
    args, dims = run.args, run.dims
    lr = get_lr(
        step,
        lr=args.lr,
        min_lr=args.min_lr,
        warmup_iters=args.lr_warmup_iters,
        decay_iters=args.lr_decay_iters,
        decay_style=args.lr_decay_style,
    )
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    indices = rank_sample_indices(step, args.global_batch_size, dims.dp, dims.dp_rank, len(run.data.train))
    micro = micro_batches(run.data.train, indices, args.micro_batch_size, dims.cp, dims.cp_rank, run.device)

    # The loss is the mean over every valid token of the global batch: sum of token losses / N, with N
    # summed over DP x CP (CP ranks hold disjoint tokens of a sample; TP ranks hold the same tokens).
    pairs = sum(visible_pairs(mb["layout"].doc_ids, args.attention_mode) for mb in micro) / dims.cp
    counts = torch.tensor([float(sum(mb["loss_mask"].sum() for mb in micro)), pairs], device=run.device)
    n_tokens, pairs = _all_reduce_sum(counts, dims.dp_cp_group).tolist()
    # DDP and FSDP2 average gradients over the DP x CP replicas; scaling by their number turns that
    # average into the sum over ranks, so the gradient is that of the global-token mean.
    scale = dims.dp * dims.cp / max(n_tokens, 1.0)
    local_sum = torch.zeros((), device=run.device)
    for i, mb in enumerate(micro):
        # Backward runs under autocast too: megatron-core's linear autograd Functions restore the forward's
        # autocast state in backward only on CUDA (custom_bwd(device_type="cuda")); on CPU their backward
        # matmuls would otherwise mix bf16 activations with fp32 weights. On GPU it changes nothing.
        with gradient_sync(run.model, enabled=i == len(micro) - 1), _autocast(run):
            token_loss = run.model(mb["tokens"], mb["labels"], mb["layout"])  # [b, s_local] fp32
            mb_sum = (token_loss.float() * mb["loss_mask"]).sum()
            (mb_sum * scale).backward()
        local_sum += mb_sum.detach()
    loss = _all_reduce_sum(local_sum.clone(), dims.dp_cp_group).item() / max(n_tokens, 1.0)
    grad_norm = clip_grad_norm_(
        run.raw_model, run.tp_names, args.clip_grad, dims, sharded=args.use_distributed_optimizer
    )
    _stop_if_not_finite(run, loss, grad_norm, local_sum, step)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return {"loss": loss, "grad_norm": grad_norm, "lr": lr, "pairs": pairs}


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean token loss over ``--eval-iters`` global batches of the validation split (the same each time)."""
    args, dims = run.args, run.dims
    run.model.eval()
    totals = torch.zeros(2, device=run.device)  # [sum of token losses, valid tokens]
    for it in range(args.eval_iters):
        indices = rank_sample_indices(it, args.global_batch_size, dims.dp, dims.dp_rank, len(run.data.valid))
        for mb in micro_batches(
            run.data.valid, indices, args.micro_batch_size, dims.cp, dims.cp_rank, run.device
        ):
            with _autocast(run):
                token_loss = run.model(mb["tokens"], mb["labels"], mb["layout"])  # [b, s_local]
            totals[0] += (token_loss.float() * mb["loss_mask"]).sum()
            totals[1] += mb["loss_mask"].sum()
    run.model.train()
    loss_sum, n_tokens = _all_reduce_sum(totals, dims.dp_cp_group).tolist()
    return loss_sum / max(n_tokens, 1.0)


def _save(run: Run, step: int, logger: StepLogger) -> None:
    path = save_checkpoint(run.args.save, step, run.model, run.optimizer, run.dims, run.meta)
    logger.log({"step": step, "saved": path})


def _save_due(args: argparse.Namespace, done: int) -> bool:
    periodic = bool(args.save_interval) and done % args.save_interval == 0
    return bool(args.save) and (periodic or done == args.train_iters)


def _exit_now(run: Run, done: int, logger: StepLogger) -> bool:
    """After step ``done``: on an exit condition, save (unless just saved), log why, and say stop."""
    reason = run.exits.reason(done, run.device) if done < run.args.train_iters else None
    if reason is None:
        return False
    if run.args.save and not _save_due(run.args, done):
        _save(run, done, logger)
    logger.log({"step": done, "exit": reason})
    return True


def train(run: Run) -> list[float]:
    """Run from ``run.start_step`` to ``--train-iters`` or an exit condition; returns the per-step losses."""
    args, dims = run.args, run.dims
    logger = StepLogger(dims.rank == 0, args.log_jsonl, args.tensorboard_dir)
    tokens_per_step = args.global_batch_size * args.seq_length
    losses: list[float] = []
    window_start, window_flops, window_steps = time.perf_counter(), 0.0, 0
    for step in range(run.start_step, args.train_iters):
        out = train_step(run, step)
        losses.append(out["loss"])
        window_flops += step_flops(
            run.dense_params, tokens_per_step, out["pairs"], args.num_layers, args.hidden_size
        )
        window_steps += 1
        done = step + 1
        if done % args.log_interval == 0 or done == args.train_iters:
            elapsed = time.perf_counter() - window_start
            tflops = window_flops / elapsed / dims.world / 1e12
            logger.log(
                {
                    "step": done,
                    "loss": out["loss"],
                    "lr": out["lr"],
                    "grad_norm": out["grad_norm"],
                    "tokens_per_s": window_steps * tokens_per_step / elapsed,
                    "tflops_per_gpu": tflops,
                    "mfu": tflops / args.peak_tflops if args.peak_tflops else None,
                    "mem": peak_memory_gib(),
                }
            )
            window_start, window_flops, window_steps = time.perf_counter(), 0.0, 0
        if (
            args.eval_interval
            and run.data.valid is not None
            and (done % args.eval_interval == 0 or done == args.train_iters)
        ):
            logger.log({"step": done, "eval_loss": evaluate(run)})
        if _save_due(args, done):
            _save(run, done, logger)
        if _exit_now(run, done, logger):
            break
    run.exits.uninstall()
    logger.close()
    return losses
