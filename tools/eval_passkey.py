"""Passkey retrieval over a grid of context lengths and needle depths, on a megatron_anchor model.

A trained checkpoint (the trainer's ``--save`` directory) or a converted Hugging Face one; the model and
tokenizer flags are read from its metadata (give one only to change it, e.g. ``--rotary-base``)::

    python tools/eval_passkey.py --load ckpt/ --bf16 --lengths 4096,16384,65536 \\
        --depths 0,0.25,0.5,0.75,1 --num-trials 5

Long lengths with context parallelism (the prompt is sharded in the load-balanced layout)::

    torchrun --nproc-per-node 8 tools/eval_passkey.py --load ckpt/ --context-parallel-size 8 --bf16 \\
        --lengths 131072

Prints the accuracy table and writes ``passkey.json`` (grid and every prompt's output) and
``passkey_heatmap.png`` under ``--out-dir`` (checked before the model loads).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The flags load without torch or megatron-core (--help and flag errors come back at once).
from megatron_anchor.evaluation.eval_args import (  # noqa: E402
    build_eval_parser,
    exit_on_errors,
    finish_model_args,
    out_dir_errors,
    writing_results,
)
from megatron_anchor.parallel.layout_names import CP_LAYOUTS  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Model flags (as the trainer's) plus the grid's."""
    p = build_eval_parser(__doc__)
    g = p.add_argument_group("passkey")
    g.add_argument(
        "--lengths",
        required=True,
        type=lambda s: [int(x) for x in s.split(",")],
        help="comma-separated prompt lengths in tokens",
    )
    g.add_argument(
        "--depths",
        default="0,0.25,0.5,0.75,1",
        type=lambda s: [float(x) for x in s.split(",")],
        help="comma-separated needle depths in [0, 1]",
    )
    g.add_argument("--num-trials", type=int, default=5, help="prompts (different keys) per cell")
    g.add_argument("--passkey-digits", type=int, default=5)
    g.add_argument("--max-new-tokens", type=int, default=None, help="default: digits + 3")
    g.add_argument("--micro-batch-size", type=int, default=1, help="prompts per forward")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast, as --bf16 training")
    g.add_argument("--cp-layout", choices=CP_LAYOUTS, default="balanced", help="as in training")
    g.add_argument("--anchor-token-id", type=int, default=None, help="default: tokenizer BOS, else EOS")
    g.add_argument("--out-dir", type=Path, default=Path("passkey"))
    args = p.parse_args(argv)
    errors = []
    if not all(0.0 <= d <= 1.0 for d in args.depths):
        errors.append(f"--depths {args.depths}: every depth must lie in [0, 1]")
    if min(args.num_trials, args.micro_batch_size, args.passkey_digits) < 1:
        errors.append("--num-trials, --micro-batch-size and --passkey-digits must be >= 1")
    errors += out_dir_errors(args.out_dir)
    new_tokens = args.max_new_tokens or args.passkey_digits + 3
    try:  # prompts are text: the tokenizer is the checkpoint's unless given
        finish_model_args(args, max(args.lengths) + new_tokens + 2 * args.context_parallel_size, True)
    except ValueError as err:
        errors.append(str(err))
    exit_on_errors(errors)
    return args


def _forward_tokens(length: int, generated: int) -> int:
    """Tokens through the model for one prompt: each new token recomputes the sequence so far."""
    return generated * length + generated * (generated - 1) // 2


def main(argv: list[str] | None = None) -> dict:
    """Run the grid; rank 0 prints the table and writes the JSON and the heatmap; returns the results."""
    args = parse_args(argv)
    from megatron_anchor.training.startup import import_training_stack, silence_inapplicable_warnings

    stack = ("megatron_anchor.evaluation.loading", "megatron_anchor.evaluation.passkey")
    fallbacks = import_training_stack(uses_wandb=False, modules=stack)
    silence_inapplicable_warnings()
    import torch
    from megatron.core import parallel_state as ps

    from megatron_anchor.data import default_anchor_id
    from megatron_anchor.evaluation.loading import build_eval_model, init_eval_distributed
    from megatron_anchor.evaluation.passkey import accuracy_table, build_prompt, run_passkey_grid
    from megatron_anchor.training import teardown_distributed
    from megatron_anchor.training.parallel import device_for_rank
    from megatron_anchor.training.vocab import tokenizer_from_args

    tokenizer = tokenizer_from_args(args)
    anchor = default_anchor_id(tokenizer) if args.anchor_token_id is None else args.anchor_token_id
    try:  # refuse a length too short for the prompt before loading a large model
        build_prompt(tokenizer.encode, anchor, min(args.lengths), 0.0, "9" * args.passkey_digits)
    except ValueError as err:
        raise SystemExit(f"--lengths: {err}") from err
    dims = init_eval_distributed(args.tensor_model_parallel_size, args.context_parallel_size)
    try:
        if dims.dp != 1:
            raise SystemExit(f"run with TP x CP = {dims.tp * dims.cp} processes, not {dims.world}")
        if fallbacks and dims.rank == 0:
            print(f"note: {fallbacks}", flush=True)
        model = build_eval_model(args, dims, device_for_rank())
        start = time.perf_counter()
        autocast = torch.autocast(device_for_rank().type, dtype=torch.bfloat16, enabled=args.bf16)
        with autocast:
            results = run_passkey_grid(
                model,
                tokenizer,
                anchor,
                args.lengths,
                args.depths,
                args.num_trials,
                args.passkey_digits,
                args.max_new_tokens,
                args.seed,
                args.micro_batch_size,
                cp_group=ps.get_context_parallel_group() if dims.cp > 1 else None,
                progress=dims.rank == 0,
                cp_layout=args.cp_layout,
            )
        elapsed = time.perf_counter() - start
    finally:
        teardown_distributed()
    if dims.rank == 0:
        print(accuracy_table(results))
        with writing_results(args.out_dir):
            _write_results(args, results, elapsed)
    return results


def _write_results(args: argparse.Namespace, results: dict, elapsed: float) -> None:
    """``passkey.json`` and the heatmap under ``--out-dir``, and the throughput line."""
    from megatron_anchor.evaluation.report import plot_heatmap

    args.out_dir.mkdir(parents=True, exist_ok=True)
    results["config"] = {k: v for k, v in vars(args).items() if k != "out_dir"}
    (args.out_dir / "passkey.json").write_text(json.dumps(results, indent=1, default=str))
    heatmap = plot_heatmap(
        results["accuracy"], args.lengths, args.depths, args.out_dir / "passkey_heatmap.png",
        "passkey retrieval accuracy",
    )
    n = len(results["records"])
    tokens = sum(_forward_tokens(r["length"], len(r["generated_ids"])) for r in results["records"])
    print(
        f"{n} prompts, {tokens} forward tokens in {elapsed:.1f} s ({n / elapsed:.2f} prompts/s, "
        f"{tokens / elapsed:.0f} tokens/s); wrote {heatmap} and {args.out_dir / 'passkey.json'}"
    )


if __name__ == "__main__":
    main()
