"""The distributed training loop of the anchor GPT model (entry: ``python -m megatron_anchor.pretrain``)."""

from megatron_anchor.training.arguments import build_parser, format_config, parse_args, validate_args
from megatron_anchor.training.checkpoint_args import check_resume_and_save, resolve_model_config
from megatron_anchor.training.loop import Run, build_run, evaluate, train, train_step
from megatron_anchor.training.parallel import ParallelDims, init_distributed, teardown_distributed
from megatron_anchor.training.schedule import get_lr

__all__ = [
    "ParallelDims",
    "Run",
    "build_parser",
    "build_run",
    "check_resume_and_save",
    "evaluate",
    "format_config",
    "get_lr",
    "init_distributed",
    "parse_args",
    "resolve_model_config",
    "teardown_distributed",
    "train",
    "train_step",
    "validate_args",
]
