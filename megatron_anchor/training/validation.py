"""The trainer's flags checked against each other and the world size, and the values they imply.

Everything here is arithmetic on the flags, but for the ``--load`` checkpoint's ``meta.json`` (and a probe
file under ``--save``) read by ``checkpoint_args``; ``preflight`` checks what the other flags point at.
Each check is independent and raises ``ValueError`` naming the flag and the value; ``check_args`` runs them
all and gathers their errors (a check that needs a failed one is skipped).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from megatron_anchor.data.splits import check_blend, check_split
from megatron_anchor.parallel.comm_types import cp_degrees, kv_head_repeat, kv_repeat_note
from megatron_anchor.parallel.layout_names import required_multiple
from megatron_anchor.training.megatron_flags import check_restated
from megatron_anchor.training.report import Report, raise_all, require
from megatron_anchor.training.vocab import check_padded_vocab, check_tokenizer_flags, check_vocabulary_source


def validate_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Check the flags against each other and the world size; fill derived values. Raises a ValueError
    (``report.ConfigError``) listing every problem found, one per line."""
    report = Report()
    check_args(args, world_size, report)
    raise_all(report.errors)
    return args


def check_args(args: argparse.Namespace, world_size: int, report: Report) -> None:
    """Every check of the flags, each on its own: failures are gathered in ``report.errors``; notes for
    the user in ``args.checkpoint_notes`` and ``report.notes``."""
    from megatron_anchor.training.checkpoint_args import (
        check_resume_and_save,
        resolve_model_config,
        take_recorded_tokenizer,
    )

    args.checkpoint_notes, args.restated_flags = [], []
    run = lambda name, check, **kw: report.run(name, check, args=args, **kw)  # noqa: E731
    tp_cp = ("tensor_model_parallel_size", "context_parallel_size", "pipeline_model_parallel_size")
    tokenizer = ("tokenizer_type", "tokenizer_model", "vocab_file", "merge_file", "vocab_size")
    run("pipeline", lambda: _validate_pipeline(args), needs=tp_cp)
    run("parallel", lambda: _validate_parallel(args, world_size), needs=tp_cp)
    def recorded_tokenizer() -> None:  # a resume without tokenizer flags keeps its run's tokenizer
        if args.vocab_size is None and not args.finetune:
            args.checkpoint_notes.extend(take_recorded_tokenizer(args, required=False, resume_only=True))

    run("recorded tokenizer", recorded_tokenizer, needs=("load", *tokenizer))
    run("tokenizer", lambda: check_tokenizer_flags(args), needs=tokenizer, after=("recorded tokenizer",))
    run("vocabulary", lambda: check_padded_vocab(args), after=("parallel", "tokenizer"),
        needs=("padded_vocab_size",))  # fmt: skip
    def model() -> None:  # --load's recorded model fills the model flags left out, then the model rules
        args.checkpoint_notes.extend(resolve_model_config(args, args.tensor_model_parallel_size))

    run("model", model, after=("parallel", "tokenizer", "vocabulary"))
    run("vocabulary source", lambda: check_vocabulary_source(args), after=("model",))
    run("query groups", lambda: report.notes.extend(_query_groups_note(args)), after=("model",))
    run("sequence", lambda: _validate_sequence(args), after=("parallel",), needs=("seq_length", "cp_layout"))
    run("batch", lambda: _validate_batch(args), after=("parallel",), needs=("micro_batch_size",))
    run("schedule", lambda: _validate_schedule(args), after=("batch",))
    run("precision", lambda: _validate_precision(args))
    run("sequence parallel", lambda: _validate_sequence_parallel(args), after=("parallel", "sequence"))
    run("cp comm type", lambda: _validate_cp_comm_type(args),
        after=("parallel", "model", "sequence", "batch"),
        needs=("cp_comm_type", "hierarchical_context_parallel_sizes"))  # fmt: skip
    run("data", lambda: _validate_data(args))
    run("split", lambda: check_split(args.split), needs=("split",))
    if args.data_path:
        run("blend", lambda: check_blend(args.data_path), needs=("data_path",))
    run("logging", lambda: _validate_logging(args))
    run("recompute", lambda: _validate_recompute(args), after=("model",))
    run("learning rates", lambda: _validate_learning_rates(args), needs=("lr", "min_lr"))
    run("restated", lambda: _restated(args), after=("model", "sequence"))
    # After the batch and schedule defaults: a resume must keep them.
    run("checkpoint", lambda: args.checkpoint_notes.extend(check_resume_and_save(args)),
        after=("model", "batch", "schedule"), needs=("load", "save"))  # fmt: skip
    run("optimizer state", lambda: _validate_optimizer_state(args), after=("model",))


def _query_groups_note(args: argparse.Namespace) -> list[str]:
    """Megatron-LM reads --num-query-groups only with --group-query-attention; here it always applies."""
    given = set(getattr(args, "given_flags", ()))
    if "--num-query-groups" not in given or "--group-query-attention" in given:
        return []
    if args.num_query_groups == args.num_attention_heads:
        return []
    return [
        f"--num-query-groups {args.num_query_groups} gives grouped-query attention without "
        "--group-query-attention (Megatron-LM would ignore it without that switch)"
    ]


def _validate_optimizer_state(args: argparse.Namespace) -> None:
    """A checkpoint saved with --no-save-optim resumes only without its (absent) optimizer state."""
    path = getattr(args, "load_checkpoint", None)
    if path is None or args.finetune or args.no_load_optim:
        return
    from megatron_anchor.checkpoint import read_meta

    require(
        read_meta(path).get("optimizer_saved") is not False,
        f"--load {path} holds no optimizer state (saved with --no-save-optim): add --no-load-optim "
        f"(or --finetune)",
    )


def _restated(args: argparse.Namespace) -> None:
    args.restated_flags, errors = check_restated(args)
    raise_all(errors)


def _validate_pipeline(args: argparse.Namespace) -> None:
    pp = args.pipeline_model_parallel_size
    require(pp == 1, f"--pipeline-model-parallel-size {pp}: pipeline parallelism is not supported (use 1)")


def _validate_parallel(args: argparse.Namespace, world_size: int) -> None:
    tp, cp = args.tensor_model_parallel_size, args.context_parallel_size
    require(tp >= 1 and cp >= 1, "--tensor-model-parallel-size and --context-parallel-size must be >= 1")
    require(world_size % (tp * cp) == 0, f"world size {world_size} is not divisible by TP {tp} x CP {cp}")
    args.data_parallel_size = world_size // (tp * cp)
    args.world_size = world_size


def _validate_sequence(args: argparse.Namespace) -> None:
    s, cp = args.seq_length, args.context_parallel_size
    require(s is not None, "--seq-length is required")
    require(s > 0, "--seq-length must be positive")
    multiple = required_multiple(args.cp_layout, cp)
    require(
        s % multiple == 0,
        f"--seq-length {s} must be divisible by {multiple} for --context-parallel-size {cp} "
        f"with --cp-layout {args.cp_layout}",
    )


def _validate_batch(args: argparse.Namespace) -> None:
    mbs, dp = args.micro_batch_size, args.data_parallel_size
    require(mbs >= 1, "--micro-batch-size must be >= 1")
    if args.global_batch_size is None:
        args.global_batch_size = mbs * dp
    gbs = args.global_batch_size
    require(
        gbs % (mbs * dp) == 0,
        f"--global-batch-size {gbs} must be a multiple of --micro-batch-size {mbs} x data-parallel size {dp}",
    )
    args.num_micro_batches = gbs // (mbs * dp)


def _samples_to_iters(args: argparse.Namespace) -> None:
    """Megatron's sample-based schedule, in whole optimizer steps of ``--global-batch-size`` samples."""
    gbs = args.global_batch_size
    require(args.train_iters is None, "give either --train-iters or --train-samples, not both")
    require(
        args.lr_decay_iters is None and args.lr_warmup_iters == 0,
        "with --train-samples give the schedule in samples (--lr-decay-samples, --lr-warmup-samples)",
    )
    args.train_iters = args.train_samples // gbs
    require(
        args.train_iters > 0, f"--train-samples {args.train_samples} is less than one global batch {gbs}"
    )
    if args.lr_decay_samples is not None:
        args.lr_decay_iters = args.lr_decay_samples // gbs
    args.lr_warmup_iters = args.lr_warmup_samples // gbs


def _validate_schedule(args: argparse.Namespace) -> None:
    if args.train_samples is not None:
        _samples_to_iters(args)
    else:
        require(args.train_iters is not None, "give --train-iters or --train-samples")
        require(
            args.lr_decay_samples is None and args.lr_warmup_samples == 0,
            "--lr-decay-samples and --lr-warmup-samples go with --train-samples (use the *-iters flags)",
        )
    require(args.train_iters > 0, "--train-iters must be positive")
    args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    if args.lr_warmup_fraction is not None:
        fraction = args.lr_warmup_fraction
        require(
            args.lr_warmup_iters == 0,
            "give one of --lr-warmup-fraction, --lr-warmup-iters and --lr-warmup-samples",
        )
        require(0 <= fraction <= 1, f"--lr-warmup-fraction {fraction} must lie in [0, 1]")
        args.lr_warmup_iters = round(fraction * args.lr_decay_iters)
    require(
        0 <= args.lr_warmup_iters <= args.lr_decay_iters,
        f"--lr-warmup-iters {args.lr_warmup_iters} must lie in [0, lr-decay-iters {args.lr_decay_iters}]",
    )
    errors = [
        f"--{flag.replace('_', '-')} must be positive"
        for flag in ("log_interval", "eval_interval", "save_interval", "exit_interval")
        if getattr(args, flag) is not None and getattr(args, flag) <= 0
    ]
    if args.manual_gc_interval < 0:
        errors.append("--manual-gc-interval must be >= 0")
    raise_all(errors)


def _validate_learning_rates(args: argparse.Namespace) -> None:
    """--lr and --min-lr, and Megatron's separate LR for the input embedding and output layer."""
    require(math.isfinite(args.lr), "--lr must be finite")
    require(0 <= args.min_lr <= args.lr, f"--min-lr {args.min_lr} must lie in [0, --lr {args.lr}]")
    lr, min_lr = args.decoupled_lr, args.decoupled_min_lr
    if lr is None:
        require(min_lr is None, "--decoupled-min-lr needs --decoupled-lr (Megatron-LM would ignore it)")
        return
    low = args.min_lr if min_lr is None else min_lr
    require(0 <= low <= lr, f"--decoupled-min-lr {low} must lie in [0, --decoupled-lr {lr}]")


def _validate_data(args: argparse.Namespace) -> None:
    require(args.mock_data or args.data_path, "give --data-path PREFIX (packed dataset) or --mock-data")
    require(
        not (args.mock_data and args.mask_cross_doc_labels),
        "--mask-cross-doc-labels (--eod-mask-loss) applies to --data-path datasets; "
        "--mock-data has no such labels to mask",
    )


def _validate_logging(args: argparse.Namespace) -> None:
    errors = []
    if args.save_interval is not None and not args.save:
        errors.append("--save-interval needs --save DIR")
    if args.no_save_optim and not args.save:
        errors.append("--no-save-optim needs --save DIR")
    if args.wandb_project is not None and not (args.wandb_save_dir or args.save):
        errors.append("--wandb-project needs --wandb-save-dir DIR (or --save, whose wandb/ it then uses)")
    if args.profile:
        start, end = args.profile_step_start, args.profile_step_end
        if not 0 <= start < end:
            errors.append(f"--profile-step-start {start} must lie in [0, --profile-step-end {end})")
        if args.use_pytorch_profiler and not (args.tensorboard_dir or args.save or args.log_jsonl):
            where = "--tensorboard-dir, --save or --log-jsonl"
            errors.append(f"--use-pytorch-profiler needs a place for its traces: {where}")
    raise_all(errors)


def _validate_recompute(args: argparse.Namespace) -> None:
    """Megatron's --recompute-method/--recompute-num-layers, as the layers to recompute from the first."""
    method, n = args.recompute_method, args.recompute_num_layers
    if args.recompute_granularity != "full":
        require(
            method is None and n is None,
            "--recompute-method and --recompute-num-layers go with --recompute-granularity full",
        )
        return
    if method == "block":
        require(n is not None, "--recompute-method block needs --recompute-num-layers N")
        require(
            0 <= n <= args.num_layers,
            f"--recompute-num-layers {n} must lie in [0, --num-layers {args.num_layers}]",
        )
        return
    require(
        n in (None, 1),
        f"--recompute-num-layers {n}: uniform recompute checkpoints every layer here (use 1, or block)",
    )
    args.recompute_num_layers = None  # every layer


def _validate_precision(args: argparse.Namespace) -> None:
    require(
        args.bf16 or not args.grad_reduce_in_bf16,
        "--grad-reduce-in-bf16 applies to --bf16 training; without --bf16 gradients are fp32 and reduced so",
    )
    require(
        args.cross_entropy_chunk_size >= 0,
        f"--cross-entropy-chunk-size must be 0 (off) or positive, got {args.cross_entropy_chunk_size}",
    )


def _validate_sequence_parallel(args: argparse.Namespace) -> None:
    tp, cp = args.tensor_model_parallel_size, args.context_parallel_size
    if args.sequence_parallel and tp == 1:
        # As Megatron: SP without TP is switched off with a notice (nothing to shard over).
        if os.environ.get("RANK", "0") == "0":
            print("notice: --sequence-parallel disabled: --tensor-model-parallel-size is 1", file=sys.stderr)
        args.sequence_parallel = False
    require(
        not args.sequence_parallel or (args.seq_length // cp) % tp == 0,
        f"--sequence-parallel: each CP rank's {args.seq_length // cp} tokens (--seq-length / "
        f"--context-parallel-size) must divide by --tensor-model-parallel-size {tp}",
    )


def _notice(message: str) -> None:
    if os.environ.get("RANK", "0") == "0":
        print(f"notice: {message}", file=sys.stderr)


def _validate_cp_comm_type(args: argparse.Namespace) -> None:
    """Megatron's --cp-comm-type (one type for every layer) and --hierarchical-context-parallel-sizes;
    sets ``cp_a2a_size``, the all-to-all degree, and says what a K/V head repetition costs."""
    types, sizes, cp = args.cp_comm_type, args.hierarchical_context_parallel_sizes, args.context_parallel_size
    require(
        len(set(types)) == 1,
        f"--cp-comm-type {' '.join(types)}: give one type; every layer uses the same one here",
    )
    args.cp_comm_type = types[0]
    degrees = cp_degrees(args.cp_comm_type, cp, sizes)
    if sizes is not None and args.cp_comm_type != "a2a+p2p":
        _notice(
            f"--hierarchical-context-parallel-sizes applies to --cp-comm-type a2a+p2p; unused with {types[0]}"
        )
    args.cp_a2a_size = degrees.a2a if cp > 1 else 1
    if args.cp_a2a_size == 1:
        return
    tp = args.tensor_model_parallel_size
    heads = args.num_attention_heads // tp
    heads_kv = max(1, (args.num_query_groups or args.num_attention_heads) // tp)
    try:
        kv_head_repeat(heads, heads_kv, args.cp_a2a_size)
    except ValueError as err:
        raise ValueError(f"--cp-comm-type {args.cp_comm_type}: {err} (--num-attention-heads / TP)") from None
    tokens = args.seq_length // cp * args.micro_batch_size
    dim = args.hidden_size // args.num_attention_heads
    note = kv_repeat_note(heads, heads_kv, args.cp_a2a_size, tokens, dim, 2 if args.bf16 else 4)
    if note:
        _notice(note)
