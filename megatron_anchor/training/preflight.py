"""What the flags point at, checked before any process group or model exists: the tokenizer loads (and fits
``--vocab-size``), every ``--data-path`` prefix is a readable pair (packed samples of ``--seq-length``, or
Megatron-LM's plain documents) preprocessed with the training tokenizer, every output path can be written,
the packages the requested logging needs are installed.

``--dry-run`` prints the findings; a training run stops on the first start-up with any error. Packages
and GPUs are checked on the machine where the check runs, so for a dry run on a login node their absence
is a warning (the training nodes may have them) and for a training run an error.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass, field

from megatron_anchor._files import writable_problem
from megatron_anchor.training.profiling import trace_dir
from megatron_anchor.training.step_log import wandb_dir


@dataclass
class Findings:
    """Errors (the run cannot work), warnings (it may not), facts (what was found), notes (what every run
    says at start-up, e.g. each dataset's layout)."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        """One line per finding: errors, then warnings, then facts, then notes."""
        return "\n".join(
            [f"error: {e}" for e in self.errors]
            + [f"warning: {w}" for w in self.warnings]
            + [f"ok: {f}" for f in self.facts]
            + [f"note: {n}" for n in self.notes]
        )


def preflight(args: argparse.Namespace, dry_run: bool) -> Findings:
    """Every check of this module on the validated ``args``."""
    found = Findings()
    _check_tokenizer(args, found)
    _check_data(args, found)
    _check_outputs(args, found)
    _check_machine(args, found, dry_run)
    return found


def _check_tokenizer(args: argparse.Namespace, found: Findings) -> None:
    if args.tokenizer_model is None:
        return
    from megatron_anchor.training.vocab import tokenizer_size

    try:
        size = tokenizer_size(args.tokenizer_type, args.tokenizer_model)
    except Exception as err:  # sentencepiece and transformers raise many kinds; the run cannot start
        found.errors.append(f"--tokenizer-model {args.tokenizer_model} ({args.tokenizer_type}): {err}")
        return
    if args.vocab_size is not None and args.vocab_size < size:
        found.errors.append(
            f"--vocab-size {args.vocab_size} is smaller than the {size} ids of --tokenizer-model "
            f"{args.tokenizer_model}"
        )
    found.facts.append(f"tokenizer {args.tokenizer_type} {args.tokenizer_model}: {size:,} ids")


def _data_prefixes(data_path: list[str]) -> list[str]:
    """The prefixes of Megatron's ``--data-path [weight] prefix ...``."""
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, _ = get_blend_from_list(data_path)
    return prefixes


def _check_data(args: argparse.Namespace, found: Findings) -> None:
    """Each prefix: its pair, its layout (a note), its tokenizer against the training one."""
    if not args.data_path:
        return
    from megatron_anchor.data.data_record import check_data_tokenizer
    from megatron_anchor.data.layouts import PLAIN, describe_prefix

    try:
        prefixes = _data_prefixes(args.data_path)
    except (ValueError, AssertionError) as err:
        found.errors.append(f"--data-path {' '.join(args.data_path)}: {err}")
        return
    training, vocab = _training_tokenizer(args)
    for prefix in prefixes:
        missing = [prefix + ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:
            found.errors.append(f"--data-path {prefix}: no file {missing[0]}")
            continue
        try:
            layout, line = describe_prefix(prefix, args.seq_length)
            found.notes.append(line)
            if layout == PLAIN:
                _check_plain(args, prefix, found)
            if vocab is not None and (note := check_data_tokenizer(prefix, training, vocab)):
                found.notes.append(note)
        except (ValueError, AssertionError, OSError) as err:
            named = str(err).startswith("--data-path")
            found.errors.append(str(err) if named else f"--data-path {prefix}: {err}")


def _training_tokenizer(args: argparse.Namespace) -> tuple[dict | None, int | None]:
    """The training tokenizer's identity (None without one) and the model's vocabulary (None if unknown)."""
    from megatron_anchor.data.tokenizers import tokenizer_identity
    from megatron_anchor.training.vocab import tokenizer_size

    if args.tokenizer_model is None:
        return None, args.vocab_size
    try:
        size = tokenizer_size(args.tokenizer_type, args.tokenizer_model)
    except Exception:  # reported by _check_tokenizer
        return None, None
    return tokenizer_identity(args.tokenizer_type, args.tokenizer_model, size), args.vocab_size or size


def _check_plain(args: argparse.Namespace, prefix: str, found: Findings) -> None:
    """A plain dataset needs the tokenizer's anchor, and megatron-core's index cache must be writable."""
    from megatron_anchor.data.layouts import PLAIN_NEEDS_TOKENIZER

    if args.tokenizer_model is None:
        found.errors.append(f"--data-path {prefix}: {PLAIN_NEEDS_TOKENIZER}")
    if args.data_cache_path is None:  # megatron-core's GPTDataset keeps its indices under the prefix then
        cache = os.path.join(prefix, "cache")
        problem = writable_problem(f"--data-path {prefix}: megatron-core's index cache", cache)
        if problem:
            found.errors.append(f"{problem}; give --data-cache-path DIR")


def _check_outputs(args: argparse.Namespace, found: Findings) -> None:
    outputs = [
        ("--log-jsonl", args.log_jsonl, True),
        ("--tensorboard-dir", args.tensorboard_dir, False),
        ("--data-cache-path", args.data_cache_path, False),
        ("--wandb-save-dir", wandb_dir(args) if args.wandb_project else None, False),
        ("--profile", trace_dir(args) if args.profile and args.use_pytorch_profiler else None, False),
    ]
    for flag, path, is_file in outputs:
        problem = writable_problem(flag, path, is_file) if path else None
        if problem:
            found.errors.append(problem)


def _check_machine(args: argparse.Namespace, found: Findings, dry_run: bool) -> None:
    """Optional packages and devices the flags need on the machine that trains."""
    needs = []
    if args.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        needs.append("--tensorboard-dir needs the tensorboard package (pip install tensorboard)")
    if args.wandb_project and importlib.util.find_spec("wandb") is None:
        needs.append("--wandb-project needs the wandb package (pip install wandb)")
    if getattr(args, "transformer_impl", None) == "transformer_engine":
        from megatron_anchor.model import transformer_engine_available

        if not transformer_engine_available():
            needs.append("--transformer-impl transformer_engine: Transformer Engine does not import here")
    if args.profile and not args.use_pytorch_profiler:
        import torch

        if not torch.cuda.is_available():
            needs.append("--profile without --use-pytorch-profiler drives nsys, which needs a GPU")
    if dry_run:
        found.warnings += [f"{n}; this machine lacks it (the training nodes must have it)" for n in needs]
    else:
        found.errors += needs
