"""Command-line flags (Megatron's names where Megatron has the flag) and their up-front validation."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math

from megatron_anchor.data import POSITION_MODES
from megatron_anchor.training.checkpoint_args import (
    add_checkpoint_args,
    check_resume_and_save,
    resolve_model_config,
)
from megatron_anchor.training.model_args import add_model_args


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data-path", nargs="+", default=None, help="[weight] prefix ... of packed datasets")
    g.add_argument("--mock-data", action="store_true", help="synthetic packed samples (tests, benchmarks)")
    g.add_argument("--split", default="969,30,1")
    g.add_argument(
        "--seq-length", type=int, required=True, help="S: input tokens per sample (files hold S+1)"
    )
    g.add_argument("--position-ids", choices=POSITION_MODES, default="global")
    g.add_argument("--mask-cross-doc-labels", action="store_true")
    g.add_argument("--tokenizer-type", default=None)
    g.add_argument("--tokenizer-model", default=None)
    g.add_argument("--vocab-size", type=int, default=None, help="vocabulary size without a tokenizer")


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=1)
    g.add_argument("--global-batch-size", type=int, default=None, help="default: micro * data-parallel")
    g.add_argument("--train-iters", type=int, required=True)
    g.add_argument("--lr", type=float, default=3e-4)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--lr-decay-style", choices=("cosine", "linear", "constant"), default="cosine")
    g.add_argument("--lr-warmup-iters", type=int, default=0)
    g.add_argument("--lr-decay-iters", type=int, default=None, help="default: --train-iters")
    g.add_argument("--weight-decay", type=float, default=0.01)
    g.add_argument("--adam-beta1", type=float, default=0.9)
    g.add_argument("--adam-beta2", type=float, default=0.95)
    g.add_argument("--adam-eps", type=float, default=1e-8)
    g.add_argument("--clip-grad", type=float, default=1.0, help="0 disables clipping")
    g.add_argument("--bf16", action="store_true", help="bf16 compute, fp32 master weights")
    g.add_argument("--seed", type=int, default=1234)


def _parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)
    g.add_argument(
        "--use-distributed-optimizer",
        action="store_true",
        help="shard gradients and optimizer state over data parallel ranks (FSDP2, ZeRO-2-like)",
    )


def _io_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpointing and logging")
    g.add_argument("--save", default=None)
    g.add_argument("--load", default=None)
    g.add_argument("--save-interval", type=int, default=None)
    g.add_argument("--eval-interval", type=int, default=None)
    g.add_argument("--eval-iters", type=int, default=10)
    g.add_argument("--log-interval", type=int, default=10)
    g.add_argument("--log-jsonl", default=None, help="append one JSON object per logged step")
    g.add_argument("--tensorboard-dir", default=None)
    g.add_argument("--peak-tflops", type=float, default=None, help="per-device peak for MFU")
    g.add_argument("--dry-run", action="store_true", help="validate, print the resolved config, exit")


def build_parser() -> argparse.ArgumentParser:
    """The pretraining argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m megatron_anchor.pretrain",
        description="AnchorAttention long-context pretraining on megatron-core",
    )
    for add in (add_model_args, _data_args, _train_args, _parallel_args, _io_args, add_checkpoint_args):
        add(p)
    return p


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def validate_args(args: argparse.Namespace, world_size: int) -> argparse.Namespace:
    """Check the flags against each other, the world size and the ``--load`` checkpoint's metadata; fill
    derived values and the model flags left out (from the checkpoint). Raises ValueError. Reads only
    files (``meta.json``, a probe file under ``--save``), so ``--dry-run`` runs every check."""
    tp, cp, pp = (
        args.tensor_model_parallel_size,
        args.context_parallel_size,
        args.pipeline_model_parallel_size,
    )
    _require(pp == 1, f"--pipeline-model-parallel-size {pp}: pipeline parallelism is not supported (use 1)")
    _require(tp >= 1 and cp >= 1, "--tensor-model-parallel-size and --context-parallel-size must be >= 1")
    _require(
        world_size % (tp * cp) == 0,
        f"world size {world_size} is not divisible by TP {tp} x CP {cp}",
    )
    args.data_parallel_size = world_size // (tp * cp)
    args.world_size = world_size
    notes = resolve_model_config(args, tp)  # --load's recorded model fills the flags left out
    s = args.seq_length
    _require(s > 0, "--seq-length must be positive")
    _require(
        cp == 1 or s % (2 * cp) == 0,
        f"--seq-length {s} must be divisible by 2 x --context-parallel-size = {2 * cp}",
    )
    _validate_batch(args)
    _validate_schedule(args)
    _require(
        args.mock_data or args.data_path,
        "give --data-path PREFIX (packed dataset) or --mock-data",
    )
    _require(
        not (args.mock_data and args.mask_cross_doc_labels),
        "--mask-cross-doc-labels applies to --data-path datasets; --mock-data has no such labels to mask",
    )
    _require(
        args.tokenizer_model is not None or args.vocab_size is not None,
        "give --tokenizer-type/--tokenizer-model or --vocab-size",
    )
    _require(args.save_interval is None or args.save, "--save-interval needs --save DIR")
    _require(
        args.tensorboard_dir is None or importlib.util.find_spec("tensorboard") is not None,
        "--tensorboard-dir needs the tensorboard package (pip install tensorboard)",
    )
    args.checkpoint_notes = notes + check_resume_and_save(args)
    return args


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


def _validate_schedule(args: argparse.Namespace) -> None:
    _require(args.train_iters > 0, "--train-iters must be positive")
    args.lr_decay_iters = args.lr_decay_iters or args.train_iters
    _require(
        0 <= args.lr_warmup_iters <= args.lr_decay_iters,
        f"--lr-warmup-iters {args.lr_warmup_iters} must lie in [0, lr-decay-iters {args.lr_decay_iters}]",
    )
    _require(0 <= args.min_lr <= args.lr, f"--min-lr {args.min_lr} must lie in [0, --lr {args.lr}]")
    for flag in ("log_interval", "eval_interval", "save_interval"):
        value = getattr(args, flag)
        _require(value is None or value > 0, f"--{flag.replace('_', '-')} must be positive")
    _require(math.isfinite(args.lr), "--lr must be finite")


def parse_args(argv: list[str] | None, world_size: int) -> argparse.Namespace:
    """Parse and validate; errors name the flag and exit with argparse's usage message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return validate_args(args, world_size)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def format_config(args: argparse.Namespace) -> str:
    """The resolved configuration as sorted JSON (printed at start-up and by --dry-run)."""
    return json.dumps({k: v for k, v in sorted(vars(args).items())}, indent=1, default=str)
