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

Resuming: ``--load DIR --save DIR`` (the same directory) starts from scratch the first time and resumes
from ``DIR/latest`` afterwards; model flags left out are taken from the checkpoint. Preemption:
``--exit-signal-handler`` saves after the step in flight on SIGTERM and exits 0 (see
``megatron_anchor.training.exit_conditions`` for torchrun under a scheduler).
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from megatron_anchor.checkpoint import CheckpointError
from megatron_anchor.training import (
    build_run,
    format_config,
    init_distributed,
    parse_args,
    teardown_distributed,
)
from megatron_anchor.training import train as train_loop


def main(argv: list[str] | None = None) -> list[float]:
    """Parse, validate, set up the groups, train; returns this rank's per-step losses."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    args = parse_args(argv, world_size)
    rank = int(os.environ.get("RANK", "0"))
    if args.dry_run:
        if rank == 0:
            print(format_config(args))
        return []
    dims = init_distributed(
        args.tensor_model_parallel_size, args.context_parallel_size, args.distributed_timeout_minutes
    )
    try:
        if dims.rank == 0:
            print(format_config(args), flush=True)
        run = build_run(args, dims)
        losses = train_loop(run)
    finally:
        teardown_distributed()
    return losses


# gloo reports timeouts and lost peers as plain RuntimeErrors; NCCL as DistBackendError.
_PEER_ERRORS = ("Timed out waiting", "Connection closed by peer", "Connection reset by peer")


def _lost_peer(err: RuntimeError) -> bool:
    return isinstance(err, dist.DistBackendError) or any(s in str(err) for s in _PEER_ERRORS)


def _fail(message: str, every_rank: bool = True) -> None:
    rank = os.environ.get("RANK", "0")
    if every_rank or rank == "0":
        print(f"error: rank {rank}: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


if __name__ == "__main__":
    try:
        main()
    except FloatingPointError as err:  # one line naming the step and the ranks
        _fail(str(err))
    except CheckpointError as err:  # the ranks agree on it: rank 0 says it, naming the file
        _fail(str(err), every_rank=False)
    except RuntimeError as err:
        if not _lost_peer(err):
            raise
        first = str(err).strip().splitlines()[0]
        _fail(
            f"a collective failed (a rank stalled, died or lost its connection; the limit is "
            f"--distributed-timeout-minutes): {first}"
        )
