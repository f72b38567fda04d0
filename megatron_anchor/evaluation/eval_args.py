"""The evaluation tools' command line: the trainer's model flags resolved by the trainer's rule, the tokenizer
the checkpoint records, and the output directory probed before any work.

An evaluation takes the same model, RoPE and tokenizer flags as ``megatron_anchor.pretrain`` (Megatron's
names). Flags left out are taken from the ``--load`` checkpoint (trained or converted), the tokenizer too;
a flag contradicting its shape is an error, a new RoPE is reported on one line. Importing this module loads
neither torch nor megatron-core, so ``--help`` and flag errors come back at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator

from megatron_anchor._files import os_error_message, output_problem
from megatron_anchor.training.megatron_flags import add_flag
from megatron_anchor.training.model_args import add_model_args


def build_eval_parser(description: str) -> argparse.ArgumentParser:
    """A parser with the trainer's model and RoPE flags plus tokenizer, parallel, precision and --load."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    g = p.add_argument_group("model source")
    g.add_argument(
        "--load",
        default=None,
        help="checkpoint directory (trainer --save or converted); default: random initialisation from --seed",
    )
    g.add_argument("--tokenizer-type", default=None, help="default: the one the --load checkpoint records")
    g.add_argument("--tokenizer-model", default=None, help="default: the one the --load checkpoint records")
    add_flag(g, "--vocab-file", default=None)
    add_flag(g, "--merge-file", default=None)
    g.add_argument("--vocab-size", type=int, default=None, help="vocabulary size without a tokenizer")
    g.add_argument("--seed", type=int, default=1234)
    g.add_argument("--tensor-model-parallel-size", type=int, default=1)
    g.add_argument("--context-parallel-size", type=int, default=1)
    return p


def finish_model_args(
    args: argparse.Namespace, seq_length: int | None, tokenizer_required: bool = False
) -> argparse.Namespace:
    """Resolve and validate the model and tokenizer flags as the trainer does (``--load``'s metadata fills
    the flags left out). Sets ``args.seq_length`` (when given), ``args.checkpoint_notes`` and
    ``args.trained_length`` (the checkpoint's, or None). Raises ValueError naming the flag."""
    from megatron_anchor.checkpoint import read_meta, trained_length
    from megatron_anchor.training.checkpoint_args import resolve_model_config, take_recorded_tokenizer
    from megatron_anchor.training.vocab import check_tokenizer_flags, tokenizer_size

    notes = take_recorded_tokenizer(args, tokenizer_required)
    if seq_length is not None:
        args.seq_length = seq_length
    check_tokenizer_flags(args)  # the trainer's rule: GPT2BPETokenizer's files, Megatron's type names
    args.checkpoint_notes = notes + resolve_model_config(args, args.tensor_model_parallel_size)
    args.trained_length = trained_length(read_meta(args.load_checkpoint)) if args.load_checkpoint else None
    if args.tokenizer_model is None and (tokenizer_required or args.vocab_size is None):
        needs = "--tokenizer-type/--tokenizer-model" + ("" if tokenizer_required else " or --vocab-size")
        where = f" (checkpoint {args.load_checkpoint} records none)" if args.load_checkpoint else ""
        raise ValueError(f"give {needs}{where}")
    if args.tokenizer_model is not None:
        try:  # a tokenizer that does not load is one line here, not a traceback after the model loads
            tokenizer_size(args)
        except (OSError, ValueError) as err:
            raise ValueError(str(err)) from err
    return args


def out_dir_errors(out_dir: str) -> list[str]:
    """Why ``--out-dir`` cannot take the results (probed on the rank that writes them): one line, or none."""
    if os.environ.get("RANK", "0") != "0":
        return []
    problem = output_problem("--out-dir", str(out_dir))
    return [problem] if problem else []


@contextlib.contextmanager
def writing_results(out_dir: str) -> Iterator[None]:
    """A write under ``--out-dir`` that fails after the evaluation (a disk filled since start-up, a quota)
    ends with one line naming the directory and the error, and exit status 1."""
    try:
        yield
    except OSError as err:
        message = os_error_message(err, str(out_dir))
        raise SystemExit(f"error: --out-dir {out_dir}: writing the results failed: {message}") from None


def exit_on_errors(errors: list[str]) -> None:
    """Print every error of the command line, one line each, and exit 2; nothing when there are none."""
    if errors:
        print("\n".join(f"error: {e}" for e in errors), file=sys.stderr)
        raise SystemExit(2)
