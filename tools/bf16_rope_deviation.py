"""BF16 RoPE deviation diagnostic of the AnchorAttention paper (section 3) on a megatron_anchor model.

Shifting every position by the same delta changes nothing in exact arithmetic. The diagnostic runs the
model on the same sequences at positions ``delta1 + i`` and ``16 + i`` and compares the attention
probabilities of every layer and head: ``D`` sums each row's absolute difference, divided by its causal
length (``i + 1``), over rows, heads and layers; ``D_first`` is the part of it in the first token's column,
divided by T. In exact arithmetic both are 0.

Random initialisation from the model flags, or trained/converted weights with ``--load`` (model and
tokenizer flags read from the checkpoint)::

    python tools/bf16_rope_deviation.py --num-layers 2 --hidden-size 256 --num-attention-heads 4 \\
        --vocab-size 32000 --seq-length 1024 --out-dir out/deviation

    python tools/bf16_rope_deviation.py --load ckpt/ --text-file book.txt --out-dir out/deviation

Prints the delta1 sweep (``D`` against delta2 = 16, at ``--seq-length`` T) and the first-token deviation
``D_first`` as T grows (64, 128, ... up to the checkpoint's trained length, else ``--seq-length``), for bf16
with this project's fp32 RoPE, bf16 with megatron-core's unfused RoPE, and fp32, in ``causal`` and
``anchor`` attention; writes ``rope_deviation_sweep.png``, ``rope_deviation_growth.png`` and
``rope_deviation.json`` under ``--out-dir`` (checked before the model loads). Each sequence is the anchor
token followed by ``--num-documents`` documents (4 by default: with one document the two attention modes
coincide).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The flags load without torch or megatron-core (--help and flag errors come back at once).
from megatron_anchor.evaluation.deviation_grid import PATHS, default_deltas, growth_lengths  # noqa: E402
from megatron_anchor.evaluation.eval_args import (  # noqa: E402
    build_eval_parser,
    exit_on_errors,
    finish_model_args,
    out_dir_errors,
    writing_results,
)

if TYPE_CHECKING:
    import torch


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Model flags (as the trainer's) plus the diagnostic's own; every error of the command line at once."""
    p = build_eval_parser(__doc__)
    g = p.add_argument_group("diagnostic")
    g.add_argument(
        "--seq-length", type=int, default=None,
        help="T of the delta1 sweep; default 1024, or the checkpoint's trained length when shorter",
    )
    g.add_argument(
        "--lengths", type=_int_list, default=None,
        help="comma-separated T for the first-token growth; default 64, 128, ... up to the checkpoint's "
        "trained length (without --load: up to --seq-length)",
    )
    g.add_argument("--max-length", type=int, default=None, help="drop --lengths above this")
    g.add_argument(
        "--deltas", type=_int_list, default=default_deltas(),
        help="comma-separated delta1 values (default 0..22,50,100,...,2000)",
    )
    g.add_argument("--batch-size", type=int, default=2, help="sequences per forward")
    g.add_argument(
        "--num-documents", type=int, default=4,
        help="documents after the anchor per sequence (with 1, anchor and causal attention coincide)",
    )
    g.add_argument(
        "--modes", default="causal,anchor",
        help="comma-separated attention modes compared (the model's --attention-mode is not used)",
    )
    g.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated of {', '.join(PATHS)}")
    g.add_argument("--deltas-per-forward", type=int, default=8)
    g.add_argument("--text-file", default=None, help="take the sequences from this text (needs a tokenizer)")
    g.add_argument("--anchor-token-id", type=int, default=None, help="default: tokenizer BOS/EOS, else 0")
    g.add_argument("--out-dir", type=Path, default=Path("rope_deviation"))
    args = p.parse_args(argv)
    args.modes, args.paths = args.modes.split(","), args.paths.split(",")
    errors = _flag_errors(args)
    try:
        finish_model_args(args, None)
    except ValueError as err:
        errors.append(str(err))
    if args.text_file is not None and args.tokenizer_model is None and not errors:
        errors.append("--text-file needs --tokenizer-type/--tokenizer-model (or a --load that records them)")
    exit_on_errors(errors)
    _choose_lengths(args)
    return args


def _flag_errors(args: argparse.Namespace) -> list[str]:
    """The problems of the diagnostic's own flags and of --out-dir."""
    errors = []
    if args.tensor_model_parallel_size != 1 or args.context_parallel_size != 1:
        errors.append(
            "the diagnostic holds whole attention matrices in one process: use TP = CP = 1 "
            "(a checkpoint saved at TP > 1 must be converted at TP 1)"
        )
    unknown = [x for x in args.paths if x not in PATHS]
    if unknown:
        errors.append(f"--paths: unknown {unknown}; expected some of {list(PATHS)}")
    if args.text_file is not None and not os.path.isfile(args.text_file):
        errors.append(f"--text-file {args.text_file} does not exist")
    return errors + out_dir_errors(args.out_dir)


def _choose_lengths(args: argparse.Namespace) -> None:
    """The sweep's T and the growth's lengths, following the model's trained length unless given. Sets
    ``args.sweep_length``, ``args.lengths``, ``args.seq_length`` (the longest input), ``args.length_note``."""
    trained = args.trained_length
    sweep = args.seq_length or (min(1024, trained) if trained else 1024)
    longest = trained or sweep
    args.length_note = None
    if args.lengths is None:
        args.lengths = growth_lengths(longest)
        source = "the checkpoint's trained length" if trained else "--seq-length"
        args.length_note = f"growth over T = {args.lengths[0]}..{longest} ({source}; --lengths to change)"
    args.lengths = [t for t in args.lengths if args.max_length is None or t <= args.max_length]
    args.sweep_length = sweep
    args.seq_length = max([sweep, *args.lengths])  # the model's longest input


def sample_tokens(args: argparse.Namespace, padded_vocab: int) -> torch.Tensor:
    """``[batch, T]`` ids (T the longest input): the anchor, then random ids or consecutive ``--text-file``
    windows."""
    from megatron_anchor.evaluation.rope_deviation import diagnostic_sequences

    tokenizer, anchor = None, args.anchor_token_id or 0
    if args.tokenizer_model is not None:
        from megatron_anchor.data import default_anchor_id
        from megatron_anchor.training.vocab import tokenizer_from_args

        tokenizer = tokenizer_from_args(args)
        anchor = default_anchor_id(tokenizer) if args.anchor_token_id is None else args.anchor_token_id
    text_ids = None
    if args.text_file is not None:
        text_ids = tokenizer.encode(Path(args.text_file).read_text())
        if not text_ids:
            raise SystemExit(f"error: --text-file {args.text_file}: no tokens")
    vocab = tokenizer.vocab_size if tokenizer is not None else padded_vocab
    return diagnostic_sequences(args.batch_size, args.seq_length, anchor, vocab, text_ids, args.seed)


def main(argv: list[str] | None = None) -> dict:
    """Run the diagnostic; print tables, write PNGs and JSON; return the results."""
    args = parse_args(argv)
    from megatron_anchor.training.startup import import_training_stack, silence_inapplicable_warnings

    stack = ("megatron_anchor.evaluation.loading", "megatron_anchor.evaluation.rope_deviation")
    fallbacks = import_training_stack(uses_wandb=False, modules=stack)
    silence_inapplicable_warnings()
    from megatron_anchor.evaluation.loading import build_eval_model, init_eval_distributed
    from megatron_anchor.evaluation.rope_deviation import run_diagnostic
    from megatron_anchor.training import teardown_distributed
    from megatron_anchor.training.parallel import device_for_rank

    for note in [fallbacks, args.length_note]:
        if note:
            print(f"note: {note}", flush=True)
    dims = init_eval_distributed(1, 1)  # probabilities are dense over the whole sample: one process
    try:
        model = build_eval_model(args, dims, device_for_rank())
        tokens = sample_tokens(args, model.vocab_size).to(next(model.parameters()).device)
        start = time.perf_counter()
        results = run_diagnostic(
            model,
            tokens,
            args.num_documents,
            args.modes,
            args.paths,
            args.deltas,
            args.sweep_length,
            args.lengths,
            args.deltas_per_forward,
            progress=True,
        )
        elapsed = time.perf_counter() - start
    finally:
        teardown_distributed()
    with writing_results(args.out_dir):
        _write_results(args, results, elapsed)
    return results


def _write_results(args: argparse.Namespace, results: dict, elapsed: float) -> None:
    """The tables, the PNGs and ``rope_deviation.json`` under ``--out-dir``, and the throughput line."""
    from megatron_anchor.evaluation.report import deviation_tables, plot_deviation

    print(deviation_tables(results))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_deviation(results, args.out_dir)
    summary = {"config": {k: v for k, v in vars(args).items() if k != "out_dir"}, **results}
    (args.out_dir / "rope_deviation.json").write_text(json.dumps(summary, indent=1, default=str))
    tokens = results["tokens_seen"]
    print(
        f"\n{len(args.modes)} modes x {len(args.paths)} paths, {len(args.deltas)} deltas and "
        f"{len(args.lengths)} lengths: {tokens} tokens in {elapsed:.1f} s ({tokens / elapsed:.0f} tokens/s)"
        f"; wrote {', '.join(str(p) for p in plots)} and {args.out_dir / 'rope_deviation.json'}"
    )


if __name__ == "__main__":
    main()
