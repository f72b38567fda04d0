"""The trainer's flags checked against each other and the world size, and the values they imply.

Everything here is arithmetic on the flags, but for the ``--load`` checkpoint's ``meta.json`` (and a probe
file under ``--save``) read by ``checkpoint_args``; ``preflight`` checks what the other flags point at.
Errors are ``ValueError``s whose message names the flag and the value.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from megatron_anchor.data.splits import check_blend, check_split
from megatron_anchor.data.tokenizers import TOKENIZER_TYPES
from megatron_anchor.parallel.layout_names import required_multiple
from megatron_anchor.training.megatron_flags import check_restated

NULL_TOKENIZER = "NullTokenizer"
# Megatron's tokenizer types and what reads the same tokenizer here.
_TOKENIZER_HINTS = {
    "Llama2Tokenizer": "SentencePieceTokenizer with the same tokenizer.model",
    "GPTSentencePieceTokenizer": "SentencePieceTokenizer with the same .model file",
    "Llama3Tokenizer": "HuggingFaceTokenizer with the model's Hugging Face directory",
    "TikTokenizer": "HuggingFaceTokenizer with the model's Hugging Face directory",
    "MistralTokenizer": "HuggingFaceTokenizer with the model's Hugging Face directory",
    "GPT2BPETokenizer": "HuggingFaceTokenizer with a directory holding the GPT-2 tokenizer",
}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Check the flags against each other and the world size; fill derived values. Raises ValueError."""
    from megatron_anchor.training.checkpoint_args import check_resume_and_save, resolve_model_config

    _validate_parallel(args, world_size)
    # --load's recorded model fills the model flags left out, then the model rules apply (model_args).
    notes = resolve_model_config(args, args.tensor_model_parallel_size)
    s, cp = args.seq_length, args.context_parallel_size
    _require(s > 0, "--seq-length must be positive")
    multiple = required_multiple(args.cp_layout, cp)
    _require(
        s % multiple == 0,
        f"--seq-length {s} must be divisible by {multiple} for --context-parallel-size {cp} "
        f"with --cp-layout {args.cp_layout}",
    )
    _validate_batch(args)
    _validate_schedule(args)
    _validate_precision_and_sequence_parallel(args)
    _validate_data(args)
    _validate_logging(args)
    _validate_recompute(args)
    args.restated_flags = check_restated(args)
    args.checkpoint_notes = notes + check_resume_and_save(args)  # after the batch and schedule defaults
    return args


def _validate_parallel(args: argparse.Namespace, world_size: int) -> None:
    tp, cp, pp = (
        args.tensor_model_parallel_size,
        args.context_parallel_size,
        args.pipeline_model_parallel_size,
    )
    _require(pp == 1, f"--pipeline-model-parallel-size {pp}: pipeline parallelism is not supported (use 1)")
    _require(tp >= 1 and cp >= 1, "--tensor-model-parallel-size and --context-parallel-size must be >= 1")
    _require(world_size % (tp * cp) == 0, f"world size {world_size} is not divisible by TP {tp} x CP {cp}")
    args.data_parallel_size = world_size // (tp * cp)
    args.world_size = world_size


def _validate_batch(args: argparse.Namespace) -> None:
    mbs, dp = args.micro_batch_size, args.data_parallel_size
    _require(mbs >= 1, "--micro-batch-size must be >= 1")
    if args.global_batch_size is None:
        args.global_batch_size = mbs * dp
    gbs = args.global_batch_size
    _require(
        gbs % (mbs * dp) == 0,
        f"--global-batch-size {gbs} must be a multiple of --micro-batch-size {mbs} x data-parallel size {dp}",
    )
    args.num_micro_batches = gbs // (mbs * dp)


def _samples_to_iters(args: argparse.Namespace) -> None:
    """Megatron's sample-based schedule, in whole optimizer steps of ``--global-batch-size`` samples."""
    gbs = args.global_batch_size
    _require(args.train_iters is None, "give either --train-iters or --train-samples, not both")
    _require(
        args.lr_decay_iters is None and args.lr_warmup_iters == 0,
        "with --train-samples give the schedule in samples (--lr-decay-samples, --lr-warmup-samples)",
    )
    args.train_iters = args.train_samples // gbs
    _require(
        args.train_iters > 0, f"--train-samples {args.train_samples} is less than one global batch {gbs}"
    )
    if args.lr_decay_samples is not None:
        args.lr_decay_iters = args.lr_decay_samples // gbs
    args.lr_warmup_iters = args.lr_warmup_samples // gbs


def _validate_schedule(args: argparse.Namespace) -> None:
    if args.train_samples is not None:
        _samples_to_iters(args)
    else:
        _require(args.train_iters is not None, "give --train-iters or --train-samples")
        _require(
            args.lr_decay_samples is None and args.lr_warmup_samples == 0,
            "--lr-decay-samples and --lr-warmup-samples go with --train-samples (use the *-iters flags)",
        )
    _require(args.train_iters > 0, "--train-iters must be positive")
    args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    if args.lr_warmup_fraction is not None:
        fraction = args.lr_warmup_fraction
        _require(
            args.lr_warmup_iters == 0,
            "give one of --lr-warmup-fraction, --lr-warmup-iters and --lr-warmup-samples",
        )
        _require(0 <= fraction <= 1, f"--lr-warmup-fraction {fraction} must lie in [0, 1]")
        args.lr_warmup_iters = round(fraction * args.lr_decay_iters)
    _require(
        0 <= args.lr_warmup_iters <= args.lr_decay_iters,
        f"--lr-warmup-iters {args.lr_warmup_iters} must lie in [0, lr-decay-iters {args.lr_decay_iters}]",
    )
    _require(math.isfinite(args.lr), "--lr must be finite")
    _require(0 <= args.min_lr <= args.lr, f"--min-lr {args.min_lr} must lie in [0, --lr {args.lr}]")
    for flag in ("log_interval", "eval_interval", "save_interval", "exit_interval"):
        value = getattr(args, flag)
        _require(value is None or value > 0, f"--{flag.replace('_', '-')} must be positive")
    _require(args.manual_gc_interval >= 0, "--manual-gc-interval must be >= 0")


def _validate_data(args: argparse.Namespace) -> None:
    _require(args.mock_data or args.data_path, "give --data-path PREFIX (packed dataset) or --mock-data")
    _require(
        not (args.mock_data and args.mask_cross_doc_labels),
        "--mask-cross-doc-labels (--eod-mask-loss) applies to --data-path datasets; "
        "--mock-data has no such labels to mask",
    )
    if args.data_path:
        check_blend(args.data_path)
        check_split(args.split)
    _validate_tokenizer(args)


def _validate_tokenizer(args: argparse.Namespace) -> None:
    kind, model = args.tokenizer_type, args.tokenizer_model
    if kind == NULL_TOKENIZER:
        _require(model is None, "--tokenizer-type NullTokenizer takes no --tokenizer-model")
        _require(args.vocab_size is not None, "--tokenizer-type NullTokenizer needs --vocab-size")
        return
    if kind is not None and kind not in TOKENIZER_TYPES:
        hint = _TOKENIZER_HINTS.get(kind)
        supported = ", ".join([*TOKENIZER_TYPES, NULL_TOKENIZER])
        raise ValueError(
            f"--tokenizer-type {kind} is not supported"
            + (f": use {hint}" if hint else f"; expected one of {supported}")
        )
    _require((kind is None) == (model is None), "give --tokenizer-type and --tokenizer-model together")
    _require(
        model is not None or args.vocab_size is not None,
        "give --tokenizer-type/--tokenizer-model or --vocab-size",
    )


def _validate_logging(args: argparse.Namespace) -> None:
    _require(args.save_interval is None or args.save, "--save-interval needs --save DIR")
    _require(
        args.wandb_project is None or args.wandb_save_dir or args.save,
        "--wandb-project needs --wandb-save-dir DIR (or --save, whose wandb/ it then uses)",
    )
    if args.profile:
        start, end = args.profile_step_start, args.profile_step_end
        _require(0 <= start < end, f"--profile-step-start {start} must lie in [0, --profile-step-end {end})")
        _require(
            not args.use_pytorch_profiler or args.tensorboard_dir or args.save or args.log_jsonl,
            "--use-pytorch-profiler needs a place for its traces: --tensorboard-dir, --save or --log-jsonl",
        )


def _validate_recompute(args: argparse.Namespace) -> None:
    """Megatron's --recompute-method/--recompute-num-layers, as the layers to recompute from the first."""
    method, n = args.recompute_method, args.recompute_num_layers
    if args.recompute_granularity != "full":
        _require(
            method is None and n is None,
            "--recompute-method and --recompute-num-layers go with --recompute-granularity full",
        )
        return
    if method == "block":
        _require(n is not None, "--recompute-method block needs --recompute-num-layers N")
        _require(
            0 <= n <= args.num_layers,
            f"--recompute-num-layers {n} must lie in [0, --num-layers {args.num_layers}]",
        )
        return
    _require(
        n in (None, 1),
        f"--recompute-num-layers {n}: uniform recompute checkpoints every layer here (use 1, or block)",
    )
    args.recompute_num_layers = None  # every layer


def _validate_precision_and_sequence_parallel(args: argparse.Namespace) -> None:
    _require(
        args.bf16 or not args.grad_reduce_in_bf16,
        "--grad-reduce-in-bf16 applies to --bf16 training; without --bf16 gradients are fp32 and reduced so",
    )
    _require(
        args.cross_entropy_chunk_size >= 0,
        f"--cross-entropy-chunk-size must be 0 (off) or positive, got {args.cross_entropy_chunk_size}",
    )
    tp, cp = args.tensor_model_parallel_size, args.context_parallel_size
    if args.sequence_parallel and tp == 1:
        # As Megatron: SP without TP is switched off with a notice (nothing to shard over).
        if os.environ.get("RANK", "0") == "0":
            print("notice: --sequence-parallel disabled: --tensor-model-parallel-size is 1", file=sys.stderr)
        args.sequence_parallel = False
    _require(
        not args.sequence_parallel or (args.seq_length // cp) % tp == 0,
        f"--sequence-parallel: each CP rank's {args.seq_length // cp} tokens (--seq-length / "
        f"--context-parallel-size) must divide by --tensor-model-parallel-size {tp}",
    )
