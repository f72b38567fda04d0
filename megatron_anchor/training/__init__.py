"""The distributed training loop of the anchor GPT model (entry: ``python -m megatron_anchor.pretrain``).

Names are imported on first use (PEP 562): the flag parser (``build_parser``, ``parse_args``) loads without
torch or megatron-core, so that ``--help`` and flag errors are immediate.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "ParallelDims": "parallel",
    "Run": "loop",
    "build_parser": "arguments",
    "build_run": "loop",
    "check_resume_and_save": "checkpoint_args",
    "evaluate": "loop",
    "format_config": "arguments",
    "get_lr": "schedule",
    "init_distributed": "parallel",
    "parse_args": "arguments",
    "resolve_model_config": "checkpoint_args",
    "teardown_distributed": "parallel",
    "train": "loop",
    "train_step": "loop",
    "validate_args": "validation",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
