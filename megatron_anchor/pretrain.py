"""Pretrain the anchor GPT model: ``torchrun ... -m megatron_anchor.pretrain [flags]``.

CPU, 2 processes, context parallel over both (synthetic data)::

    torchrun --nproc-per-node 2 --master-addr 127.0.0.1 --master-port 29500 -m megatron_anchor.pretrain \\
        --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 1024 \\
        --context-parallel-size 2 --micro-batch-size 1 --global-batch-size 4 --train-iters 100 \\
        --mock-data --vocab-size 256 --log-interval 10

One node with 8 GPUs, TP=2 x CP=4, a packed dataset (``tools/preprocess_data.py``)::

    torchrun --nproc-per-node 8 -m megatron_anchor.pretrain --tensor-model-parallel-size 2 \\
        --context-parallel-size 4 --bf16 --use-distributed-optimizer --data-path data/corpus_anchor \\
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model ...

Several nodes: the same flags with ``torchrun --nnodes N --node-rank R --rdzv-endpoint HOST:PORT``.
Add ``--dry-run`` (no torchrun needed; ``WORLD_SIZE`` sets the world size) to check the flags, tokenizer,
data and output paths, print the resolved configuration and a verdict. Every problem of a command line is
reported in one round, before anything starts.

Only the flag parser is imported up front, so ``--help`` comes back at once.

Resuming: ``--load DIR --save DIR`` (the same directory) starts from scratch the first time and resumes
from ``DIR/latest`` afterwards; add ``--pretrained-checkpoint CKPT`` to start the first time from CKPT's
weights (this project's or a Megatron-LM ``torch_dist`` checkpoint). Model flags left out are taken from the
checkpoint. A run holds ``DIR/run.lock`` while it writes there: a second run to the same ``--save`` stops.
Preemption: ``--exit-signal-handler`` saves after the step in flight on SIGTERM and exits 0 (see
``megatron_anchor.training.exit_conditions`` for torchrun under a scheduler).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from megatron_anchor.checkpoint.layout import CheckpointError
from megatron_anchor.data.errors import DataError
from megatron_anchor.training.arguments import format_config, gather_configuration
from megatron_anchor.training.report import Report


def _notes(args: argparse.Namespace, fallbacks: str | None) -> list[str]:
    """The start-up notes: flags that restate this build or change nothing, defaults that differ from
    Megatron-LM's and were not given, megatron-core's fallbacks."""
    from megatron_anchor.training.flag_docs import unstated_differences

    notes = []
    if getattr(args, "restated_flags", None):
        given = ", ".join(args.restated_flags)
        notes.append(f"Megatron flags that restate this build (README, Megatron-LM flags): {given}")
    if getattr(args, "no_effect_flags", None):
        notes.append("Megatron flags with no effect here: " + ", ".join(args.no_effect_flags))
    differences = unstated_differences(args)
    if differences:
        notes.append(differences)
    if fallbacks:
        notes.append(fallbacks)
    return notes


def _dry_run(args: argparse.Namespace, report: Report, notes: list[str]) -> None:
    """Print the report (its errors on stderr), the resolved configuration and a verdict; exit 2 (the
    command line) or 1 (the machine) if any check failed."""
    if {"parallel", "batch", "schedule"}.isdisjoint(report.failed):
        print(
            f"dry run: {args.world_size} processes = TP {args.tensor_model_parallel_size} x CP "
            f"{args.context_parallel_size} x DP {args.data_parallel_size}; {args.train_iters:,} steps of "
            f"{args.global_batch_size} x {args.seq_length:,} tokens"
        )
    if report.errors:  # on stderr, the rest of the report on stdout
        print("\n".join(f"error: {e}" for e in report.errors), file=sys.stderr, flush=True)
    findings = [*[f"warning: {w}" for w in report.warnings], *[f"ok: {f}" for f in report.facts]]
    notes = [*getattr(args, "checkpoint_notes", []), *notes]  # a training run prints them as it loads
    print("\n".join([*findings, *[f"note: {n}" for n in notes]]))
    print("resolved configuration:\n" + format_config(args))
    print(f"dry run: {report.verdict()}" + ("" if not report.errors else " (listed above): nothing started"),
          flush=True)
    if report.errors:
        sys.exit(report.exit_code())


def main(argv: list[str] | None = None) -> list[float]:
    """Parse, check, set up the groups, train; returns this rank's per-step losses."""
    started = time.perf_counter()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    args, report = gather_configuration(argv, world_size)

    from megatron_anchor.training.startup import import_training_stack, silence_inapplicable_warnings

    fallbacks = import_training_stack(uses_wandb=getattr(args, "wandb_project", None) is not None)
    silence_inapplicable_warnings()
    from megatron_anchor.training.preflight import preflight

    preflight(args, dry_run=args.dry_run, report=report)
    notes = [*report.notes, *_notes(args, fallbacks)]
    if args.dry_run:
        if rank == 0:
            _dry_run(args, report, notes)
        elif report.errors:
            sys.exit(report.exit_code())
        return []
    if report.errors:
        if rank == 0 or os.environ.get("LOCAL_RANK") == "0":  # once per node: its files may differ
            errors = report.errors
            lines = errors if len(errors) == 1 else [f"{len(errors)} problems before the start:", *errors]
            print("error: " + "\n  ".join(lines), file=sys.stderr, flush=True)
        sys.exit(report.exit_code())
    return _train(args, notes, started)


def _train(args: argparse.Namespace, notes: list[str], started: float) -> list[float]:
    from megatron_anchor.training.checkpoint import lock_save_dir
    from megatron_anchor.training.loop import build_run, train
    from megatron_anchor.training.parallel import init_distributed, teardown_distributed
    from megatron_anchor.training.startup import write_config
    from megatron_anchor.training.summary import startup_summary

    dims = init_distributed(
        args.tensor_model_parallel_size,
        args.context_parallel_size,
        args.distributed_timeout_minutes,
        args.hierarchical_context_parallel_sizes,
    )
    lock = None
    try:
        lock = lock_save_dir(args.save, dims) if args.save else None  # before anything is written there
        config_path = write_config(args) if dims.rank == 0 else None
        run = build_run(args, dims, started_at=started)
        if dims.rank == 0:
            print(startup_summary(run, notes, config_path), flush=True)
        losses = train(run, started_at=started)
    finally:
        if lock is not None:
            lock.release()
        teardown_distributed()
    return losses


# gloo reports timeouts and lost peers as plain RuntimeErrors; NCCL as DistBackendError.
_PEER_ERRORS = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer")


def _lost_peer(err: RuntimeError) -> bool:
    import torch.distributed as dist  # loaded by then: the error came from a collective

    return isinstance(err, dist.DistBackendError) or any(s in str(err) for s in _PEER_ERRORS)


def _fail(message: str, every_rank: bool = True) -> None:
    rank = os.environ.get("RANK", "0")
    if every_rank or rank == "0":  # one write: the ranks' lines share a pipe and must not interleave
        sys.stderr.write(f"error: rank {rank}: {message}\n")
        sys.stderr.flush()
    sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except FloatingPointError as err:  # one line naming the step and the ranks
        _fail(str(err))
    except CheckpointError as err:  # the ranks agree on it: rank 0 says it, naming the file
        _fail(str(err), every_rank=False)
    except DataError as err:  # a sample that must not reach the model: the ranks that read it say so
        _fail(str(err))
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        first = str(err).strip().splitlines()[0]
        _fail(
            f"a collective failed (a rank stalled, died or lost its connection; the limit is "
            f"--distributed-timeout-minutes): {first}"
        )
