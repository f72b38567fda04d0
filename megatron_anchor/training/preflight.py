"""What the flags point at, checked before any process group or model exists: the tokenizer loads (and fits
``--vocab-size``), every ``--data-path`` prefix is a readable pair (packed samples of ``--seq-length``, or
Megatron-LM's plain documents) preprocessed with the training tokenizer, every output path can be written,
the packages the requested logging needs are installed.

Each check runs on its own and adds to the run's one report (``report.Report``), skipped when a flag
check it needs failed; ``--dry-run`` prints the report; a training run stops before it starts when the
report has any error. Packages and GPUs are checked on the machine where the check runs, so for a dry run
on a login node their absence is a warning (the training nodes may have them) and for a training run an
error.
"""

from __future__ import annotations

import argparse
import importlib.util
import os

from megatron_anchor._files import writable_problem
from megatron_anchor.training.data_plan import data_plan, samples_per_split
from megatron_anchor.training.profiling import trace_dir
from megatron_anchor.training.report import Report
from megatron_anchor.training.step_log import wandb_dir


def preflight(args: argparse.Namespace, dry_run: bool, report: Report | None = None) -> Report:
    """Every check of this module on the checked ``args``, added to ``report`` (a new one by default)."""
    found = report if report is not None else Report()
    run = lambda name, check, **kw: found.run(name, check, args=args, **kw)  # noqa: E731
    layouts: dict[str, str] = {}
    run("tokenizer size", lambda: _check_tokenizer(args, found), after=("tokenizer",))
    # after the model check, which names a checkpoint's vocabulary the tokenizer does not fit
    run("tokenizer fits", lambda: _check_tokenizer_fits(args), after=("tokenizer size", "model"))
    run("data files", lambda: layouts.update(_check_data(args, found)), after=("sequence", "data"))
    run("outputs", lambda: _check_outputs(args, found))
    run("machine", lambda: _check_machine(args, found, dry_run))
    if args.data_path:
        plan = lambda: _add_data_plan(args, layouts, found)  # noqa: E731
        run("data plan", plan, after=("data files", "split", "blend", "batch", "schedule"))
    return found


def _add_data_plan(args: argparse.Namespace, layouts: dict[str, str], found: Report) -> None:
    """Samples per split of each prefix (once ``--split`` is known good) and how often the run reads them."""
    sizes = {}
    for prefix, layout in layouts.items():
        try:
            sizes[prefix] = samples_per_split(prefix, layout, args.seq_length, args.split)
        except (ValueError, AssertionError, OSError) as err:
            found.errors.append(f"--data-path {prefix}: {err}")
    if len(sizes) < len(layouts):
        return
    facts, warnings, errors = data_plan(args, sizes)
    found.facts += facts
    found.warnings += warnings
    found.errors += errors


def _check_tokenizer(args: argparse.Namespace, found: Report) -> None:
    if args.tokenizer_model is None:
        return
    from megatron_anchor.training.vocab import tokenizer_size

    try:
        size = tokenizer_size(args)
    except Exception as err:  # sentencepiece and transformers raise many kinds; the run cannot start
        found.errors.append(f"--tokenizer-model {args.tokenizer_model} ({args.tokenizer_type}): {err}")
        return
    found.facts.append(f"tokenizer {args.tokenizer_type} {args.tokenizer_model}: {size:,} ids")


def _check_tokenizer_fits(args: argparse.Namespace) -> None:
    """ValueError when ``--vocab-size`` is smaller than the tokenizer (loaded by ``_check_tokenizer``)."""
    if args.tokenizer_model is None or args.vocab_size is None:
        return
    from megatron_anchor.training.vocab import tokenizer_size

    size = tokenizer_size(args)
    if args.vocab_size < size:
        raise ValueError(
            f"--vocab-size {args.vocab_size} is smaller than the {size} ids of --tokenizer-model "
            f"{args.tokenizer_model}"
        )


def _data_prefixes(data_path: list[str]) -> list[str]:
    """The prefixes of Megatron's ``--data-path [weight] prefix ...``."""
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, _ = get_blend_from_list(data_path)
    return prefixes


def _check_data(args: argparse.Namespace, found: Report) -> dict[str, str]:
    """Each prefix: its pair, its layout (a note), its tokenizer against the training one; returns each
    readable prefix's layout."""
    layouts: dict[str, str] = {}
    if not args.data_path:
        return layouts
    from megatron_anchor.data.data_record import check_data_tokenizer
    from megatron_anchor.data.layouts import PLAIN, describe_prefix

    try:
        prefixes = _data_prefixes(args.data_path)
    except (ValueError, AssertionError) as err:
        found.errors.append(f"--data-path {' '.join(args.data_path)}: {err}")
        return layouts
    training, vocab = _training_tokenizer(args)
    for prefix in prefixes:
        missing = [prefix + ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
        if missing:  # a path the command line names that is not there: its error, as a missing --load
            found.errors.append(f"--data-path {prefix}: no file {missing[0]}")
            found.command_line_errors += 1
            continue
        try:
            layout, line = describe_prefix(prefix, args.seq_length)
            found.notes.append(line)
            if layout == PLAIN:
                _check_plain(args, prefix, found)
            if vocab is not None and (note := check_data_tokenizer(prefix, training, vocab)):
                found.notes.append(note)
            layouts[prefix] = layout
        except (ValueError, AssertionError, OSError) as err:
            named = str(err).startswith("--data-path")
            found.errors.append(str(err) if named else f"--data-path {prefix}: {err}")
    return layouts


def _training_tokenizer(args: argparse.Namespace) -> tuple[dict | None, int | None]:
    """The training tokenizer's identity (None without one) and the model's vocabulary (None if unknown)."""
    from megatron_anchor.training.vocab import tokenizer_record, tokenizer_size

    if args.tokenizer_model is None:
        return None, args.vocab_size
    try:
        size = tokenizer_size(args)
    except Exception:  # reported by _check_tokenizer
        return None, None
    return tokenizer_record(args, size), args.vocab_size or size


def _check_plain(args: argparse.Namespace, prefix: str, found: Report) -> None:
    """A plain dataset needs the tokenizer's anchor, and megatron-core's index cache must be writable."""
    from megatron_anchor.data.layouts import PLAIN_NEEDS_TOKENIZER

    if args.tokenizer_model is None:
        found.errors.append(f"--data-path {prefix}: {PLAIN_NEEDS_TOKENIZER}")
    elif (problem := _anchor_problem(args)) is not None:
        found.errors.append(f"--data-path {prefix}: --tokenizer-model {args.tokenizer_model}: {problem}")
    if args.data_cache_path is None:  # megatron-core's GPTDataset keeps its indices under the prefix then
        cache = os.path.join(prefix, "cache")
        problem = writable_problem(f"--data-path {prefix}: megatron-core's index cache", cache)
        if problem:
            found.errors.append(f"{problem}; give --data-cache-path DIR")


def _anchor_problem(args: argparse.Namespace) -> str | None:
    """Why the training tokenizer gives a plain dataset no anchor (None when it does, or does not load:
    ``_check_tokenizer`` reports that)."""
    from megatron_anchor.data import AnchorTokens
    from megatron_anchor.training.vocab import tokenizer_from_args

    try:
        tokenizer = tokenizer_from_args(args)
    except Exception:  # sentencepiece and transformers raise many kinds
        return None
    try:
        AnchorTokens.of(tokenizer)
    except ValueError as err:
        return str(err)
    return None


def _check_outputs(args: argparse.Namespace, found: Report) -> None:
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


def _check_machine(args: argparse.Namespace, found: Report, dry_run: bool) -> None:
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
