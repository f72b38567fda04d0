"""The training loop: one step reads top to bottom (micro-batches, global-token loss, clip, step, log)."""

from __future__ import annotations

import argparse
import gc
import math
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from megatron_anchor.checkpoint import is_megatron_checkpoint, load_verified_weights
from megatron_anchor.parallel.work import visible_pairs
from megatron_anchor.training.batches import CPSlicing, micro_batches, rank_sample_indices
from megatron_anchor.training.build import (
    Datasets,
    build_datasets,
    build_model,
    build_model_config,
    build_optimizer,
    embedding_and_output_names,
    group_lr,
    model_dense_params,
)
from megatron_anchor.training.checkpoint import load_checkpoint, run_meta, save_checkpoint
from megatron_anchor.training.checkpoint_args import start_step
from megatron_anchor.training.exit_conditions import ExitConditions
from megatron_anchor.training.metrics import (
    peak_memory_gib,
    peak_tflops,
    readable_duration,
    step_flops,
)
from megatron_anchor.training.parallel import (
    ParallelDims,
    autocast_for,
    clip_grad_norm_,
    device_for_rank,
    gradient_sync,
    parallelize,
    reduce_sequence_parallel_grads,
    sequence_parallel_param_names,
    tensor_parallel_param_names,
)
from megatron_anchor.training.profiling import StepProfiler
from megatron_anchor.training.step_log import LogWindow, StepLogger, train_record
from megatron_anchor.training.vocab import resolve_vocab_size, tokenizer_vocab_size


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
    sp_names: set[str] = field(default_factory=set)


def build_run(args: argparse.Namespace, dims: ParallelDims, started_at: float | None = None) -> Run:
    """Model, wrapping, optimizer, data; then the ``--load`` checkpoint (resolved by ``validate_args``).
    ``started_at``: ``time.perf_counter()`` when the job started (for --exit-duration-in-mins)."""
    exits = ExitConditions(args, started_at)
    exits.install()  # a SIGTERM during set-up is acted on after the first step
    device = device_for_rank()
    vocab = tokenizer_vocab_size(args)
    cfg = build_model_config(args, resolve_vocab_size(args))
    raw = build_model(cfg, dims, device, args.seed)
    # megatron-core's dist_checkpointing fills the model through its sharded state dict: before wrapping.
    weights_loaded = args.load_checkpoint is not None and is_megatron_checkpoint(args.load_checkpoint)
    if weights_loaded:
        load_verified_weights(args.load_checkpoint, raw, dims.tp, dims.tp_rank)
    tp_names = tensor_parallel_param_names(raw)
    sp_names = sequence_parallel_param_names(raw)
    model = parallelize(
        raw,
        dims,
        recompute_full=args.recompute_granularity == "full",
        distributed_optimizer=args.use_distributed_optimizer,
        recompute_num_layers=args.recompute_num_layers,
        bf16=args.bf16,
        grad_reduce_in_bf16=args.grad_reduce_in_bf16,
    )
    run = Run(
        args,
        dims,
        device,
        raw,
        model,
        build_optimizer(model, args, embedding_and_output_names(raw)),
        tp_names,
        build_datasets(args, cfg.vocab_size),
        model_dense_params(cfg),
        run_meta(args, cfg, vocab, dims),
        exits,
        sp_names=sp_names,
    )
    if dims.rank == 0:
        for note in args.checkpoint_notes:
            print(f"note: {note}", flush=True)
    if args.load_checkpoint is not None:
        _resume(run, args.load_checkpoint, weights_loaded)
    return run


def _loaded_what(args: argparse.Namespace, meta: dict) -> str:
    """What a resume restored, for its one-line report."""
    if "megatron" in meta:
        iteration = meta["megatron"]["iteration"]
        return f"model weights of a Megatron-LM checkpoint (its iteration {iteration}; no checksums recorded)"
    if meta.get("weights_only"):
        return "model weights (a weights-only checkpoint)"
    if args.load_is_pretrained:
        return "model weights only (--pretrained-checkpoint)"
    if args.finetune:
        return "model weights only (--finetune)"
    return "model only (--no-load-optim)" if args.no_load_optim else "model and optimizer"


def _resume(run: Run, path: str, weights_loaded: bool) -> None:
    args = run.args
    meta = load_checkpoint(
        path,
        run.model,
        run.optimizer,
        run.dims,
        load_optim=not (args.finetune or args.no_load_optim),
        load_rng=not (args.finetune or args.no_load_rng),
        weights_loaded=weights_loaded,
    )
    run.start_step = start_step(args)
    if run.dims.rank == 0:
        rng = "restored" if meta["rng_restored"] else "from --seed"
        what = _loaded_what(args, meta)
        print(f"resumed from {path} at step {run.start_step}: {what}; RNG {rng}", flush=True)


def _all_reduce_sum(t: torch.Tensor, group) -> torch.Tensor:
    dist.all_reduce(t, group=group)
    return t


def _cp_slicing(run: Run) -> CPSlicing:
    """How this rank cuts each sample: ``--cp-layout``, balancing ``--attention-mode``'s work over the
    ring's groups (``--cp-comm-type``)."""
    args = run.args
    return CPSlicing(run.dims.cp, run.dims.cp_rank, args.cp_layout, args.attention_mode, args.cp_a2a_size)


def _autocast(run: Run):
    return autocast_for(
        run.device, bf16=run.args.bf16, distributed_optimizer=run.args.use_distributed_optimizer
    )


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
    lr = group_lr(args, {}, step)
    for group in run.optimizer.param_groups:
        group["lr"] = group_lr(args, group, step)
    indices = rank_sample_indices(step, args.global_batch_size, dims.dp, dims.dp_rank, len(run.data.train))
    micro = micro_batches(run.data.train, indices, args.micro_batch_size, _cp_slicing(run), run.device)

    # The loss is the mean over every valid token of the global batch: sum of token losses / N, with N
    # summed over DP x CP (CP ranks hold disjoint tokens of a sample; TP ranks hold the same tokens).
    pairs = sum(visible_pairs(mb["layout"].doc_ids, args.attention_mode) for mb in micro) / dims.cp
    counts = torch.tensor([sum(mb["valid_tokens"] for mb in micro), pairs], device=run.device)
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
    reduce_sequence_parallel_grads(run.raw_model, run.sp_names, dims)
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
        for mb in micro_batches(run.data.valid, indices, args.micro_batch_size, _cp_slicing(run), run.device):
            with _autocast(run):
                token_loss = run.model(mb["tokens"], mb["labels"], mb["layout"])  # [b, s_local]
            totals[0] += (token_loss.float() * mb["loss_mask"]).sum()
            totals[1] += mb["valid_tokens"]  # counted on the host by micro_batches
    run.model.train()
    loss_sum, n_tokens = _all_reduce_sum(totals, dims.dp_cp_group).tolist()
    return loss_sum / max(n_tokens, 1.0)


def _save(run: Run, step: int, logger: StepLogger) -> None:
    optimizer = None if run.args.no_save_optim else run.optimizer  # Megatron's --no-save-optim
    path = save_checkpoint(run.args.save, step, run.model, optimizer, run.dims, run.meta)
    logger.log_event(step, f"saved checkpoint {path}", saved=path)


def _log_due(args: argparse.Namespace, done: int, first: bool, exiting: bool) -> bool:
    """Log after the run's first step (start-up cost shows), every --log-interval, and at the end."""
    return first or exiting or done % args.log_interval == 0 or done == args.train_iters


def _release_memory(args: argparse.Namespace, level: int, done: int = 0) -> None:
    """Megatron's --manual-gc and --empty-unused-memory-level after step ``done`` (level 1) or an
    evaluation (level 2)."""
    interval = args.manual_gc_interval
    if args.manual_gc and (level == 2 or (interval and done % interval == 0)):
        gc.collect()  # with the collector off: every --manual-gc-interval steps and after evaluations
    if args.empty_unused_memory_level >= level and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _evaluate_and_save(run: Run, done: int, logger: StepLogger, exiting: bool) -> None:
    """Validation when due; a checkpoint every --save-interval, at the end, and before an early exit."""
    args = run.args
    if (
        args.eval_interval
        and run.data.valid is not None
        and (done % args.eval_interval == 0 or done == args.train_iters)
    ):
        logger.log_eval(done, evaluate(run), done * args.global_batch_size)
        _release_memory(args, level=2)
    at_interval = args.save_interval and done % args.save_interval == 0
    if args.save and (at_interval or exiting or done == args.train_iters):
        _save(run, done, logger)


def train(run: Run, started_at: float | None = None) -> list[float]:
    """Run from ``run.start_step`` to ``--train-iters`` or an exit condition (SIGTERM with
    --exit-signal-handler, --exit-duration-in-mins, --exit-interval: save, then stop); returns this run's
    per-step losses. ``started_at`` (``time.perf_counter()`` at start-up) times the first step."""
    args, dims = run.args, run.dims
    logger = StepLogger(args, dims.rank == 0)
    profiler = StepProfiler(args, dims.rank)
    peak = peak_tflops(args.peak_tflops, args.bf16)[0]
    tokens_per_step = args.global_batch_size * args.seq_length
    losses: list[float] = []
    window = LogWindow()
    if args.manual_gc:
        gc.disable()  # collections only where _release_memory runs them, at the same step on every rank
        gc.collect()
    try:
        for step in range(run.start_step, args.train_iters):
            profiler.before_step(step)
            tick = time.perf_counter()
            out = train_step(run, step)
            window.add(
                out["loss"],
                time.perf_counter() - tick,
                step_flops(
                    run.dense_params, tokens_per_step, out["pairs"], args.num_layers, args.hidden_size
                ),
            )
            profiler.after_step(step)
            losses.append(out["loss"])
            done, first = step + 1, step == run.start_step
            _release_memory(args, level=1, done=done)
            # The ranks agree on an exit condition (one small all-reduce, only when one is set).
            reason = run.exits.reason(done, run.device) if done < args.train_iters else None
            exiting = reason is not None
            if _log_due(args, done, first, exiting):
                logger.log_train(train_record(done, window, out, args, peak, peak_memory_gib()))
                window = LogWindow()
            if first and started_at is not None:
                elapsed = time.perf_counter() - started_at
                logger.log_event(
                    done,
                    f"first step done {readable_duration(elapsed)} after start-up began",
                    time_to_first_step_s=elapsed,
                )
            _evaluate_and_save(run, done, logger, exiting)
            if exiting:
                logger.log_event(done, f"stopping: {reason}", exit=reason)
                break
    finally:
        run.exits.uninstall()
        profiler.stop()
        logger.close()
        if args.manual_gc:
            gc.enable()
    return losses
