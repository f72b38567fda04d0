"""Start-up of a training process: the training stack imported without megatron-core's fallback warnings
(one line instead), warnings that cannot apply here silenced, the config file (``summary`` prints the
start-up summary)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import sys
import warnings
from collections.abc import Iterator

from megatron_anchor.training.arguments import format_config

CONFIG_FILE = "train_config.json"
_FALLBACK = re.compile(
    r"(?:Transformer Engine|Apex)(?: and Apex)? (?:is|are) not installed\. Falling back to (.+)"
)


@contextlib.contextmanager
def _without_module(name: str, hide: bool) -> Iterator[None]:
    """Within it, ``import name`` fails as if the package were absent (a None entry in sys.modules)."""
    hidden = hide and name not in sys.modules
    if hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if hidden:
            del sys.modules[name]


_TRAINING_STACK = ("megatron_anchor.training.loop",)


def import_training_stack(uses_wandb: bool, modules: tuple[str, ...] = _TRAINING_STACK) -> str | None:
    """Import the training loop, or the given ``modules`` (an evaluation's), and with it megatron-core;
    returns one line naming the fallbacks megatron-core takes without Transformer Engine / apex, or None
    when it takes none.

    megatron-core warns about each fallback as its modules import (6 warnings per process on a machine
    without TE and apex); they are facts about the installation, not something a run can act on.
    Other import-time warnings are shown as usual. megatron-core also imports wandb when installed (for
    its inference engine's logging), about 3 s of CPU per process: a run that does not log to W&B
    imports megatron-core as if wandb were absent.
    """
    with warnings.catch_warnings(record=True) as caught, _without_module("wandb", hide=not uses_wandb):
        warnings.simplefilter("always")
        for module in modules:
            importlib.import_module(module)
    fallbacks: list[str] = []
    for item in caught:
        match = _FALLBACK.match(str(item.message))
        if match is None:
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
            continue
        # "local implementations of multi_tensor_applier, multi_tensor_l2norm, and multi_tensor_scale."
        text = match.group(1).rstrip(".").removeprefix("local implementations of ")
        for name in re.split(r",? and |, ", text):
            if name not in fallbacks:
                fallbacks.append(name)
    if not fallbacks:
        return None
    return "megatron-core runs without Transformer Engine/apex, on: " + ", ".join(fallbacks)


def silence_inapplicable_warnings() -> None:
    """Filter the warnings that describe hazards this trainer never meets (each explained below)."""
    # FSDP2 registers its pre-backward hook on the tensors a wrapped module returns and warns when one is a
    # view, because an in-place op on a view (`out += y`) would drop the hook. The root module returns the
    # per-token loss, which megatron-core computes as `loss.transpose(0, 1).contiguous()`: with one sample
    # per micro-batch the transposed [1, s] tensor is already contiguous, so `.contiguous()` returns the
    # view itself. The training step only reads it out of place (`token_loss.float() * loss_mask`) and
    # evaluation runs under no_grad (no hook at all), so the hook always fires; the FSDP2 runs match the
    # single-process losses and gradient norms step for step (tests/training/test_train_parallel_equivalence).
    warnings.filterwarnings(
        "ignore",
        message=r"FSDP2-wrapped module \(FSDPAnchorGPTModel\) returned a view tensor",
        category=UserWarning,
    )
    # Under bf16 autocast the norms receive bf16 activations and keep their fp32 weights (the mixed-precision
    # policy); torch's CPU rms_norm then says it cannot use its fused kernel and computes the same result
    # unfused. Nothing in the run can or should change that.
    warnings.filterwarnings(
        "ignore", message=r"Mismatch dtype between input and weight: .* Cannot dispatch to fused"
    )


def run_directory(args: argparse.Namespace) -> str | None:
    """Where run files go: ``--save``, else the ``--log-jsonl`` file's directory, else TensorBoard's."""
    if args.save:
        return args.save
    if args.log_jsonl:
        return os.path.dirname(os.path.abspath(args.log_jsonl))
    return args.tensorboard_dir


def write_config(args: argparse.Namespace) -> str | None:
    """The resolved configuration as JSON in the run directory; returns its path (None: no directory)."""
    directory = run_directory(args)
    if directory is None:
        return None
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, CONFIG_FILE)
    with open(path, "w") as f:
        f.write(format_config(args) + "\n")
    return path
