"""Training throughput of a small anchor GPT on this machine: anchor vs causal, CP=1 vs CP=2, S=4K and 8K.

Each configuration runs as its own torchrun job (gloo on CPU, NCCL on GPU) on synthetic packed samples
(documents of S/8..S/2 tokens after the anchor). A job times full training steps (forward, backward,
gradient all-reduce, AdamW), split into
- attention: wall time inside every layer's core attention (fp32 RoPE + anchor_cp_attention with its ring
  P2P and the anchor exchange), forward and backward, measured during those steps (``AttentionClock``);
- communication: the DP x CP gradient all-reduce, timed afterwards on a buffer the size of the gradients;
- rest: the step minus both (projections, MLP, norms, loss, optimizer, data).

    python benchmarks/train.py            # 4 layers, hidden 256, 3 timed steps
    python benchmarks/train.py --quick    # 2 layers, hidden 128, 1 timed step
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from torchrun_job import (
    run_worker,  # benchmarks/torchrun_job.py, beside this file (puts the repo on the path)
)

from megatron_anchor.training.model_args import LLAMA_ARCHITECTURE_FLAGS


def model_flags(quick: bool, seq_length: int, mode: str, cp: int) -> list[str]:
    """Trainer flags of one configuration (fp32 on CPU, bf16 on GPU)."""
    layers, hidden, heads = (2, 128, 4) if quick else (4, 256, 8)
    flags = [
        "--num-layers", str(layers), "--hidden-size", str(hidden), "--num-attention-heads", str(heads),
        "--num-query-groups", str(heads // 2), "--seq-length", str(seq_length), "--attention-mode", mode,
        "--context-parallel-size", str(cp), "--micro-batch-size", "1", "--train-iters", "100",
        "--mock-data", "--vocab-size", "4096", "--lr", "1e-4", *LLAMA_ARCHITECTURE_FLAGS,
    ]  # fmt: skip
    return flags + (["--bf16"] if _has_cuda() else [])


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _timed(fn, repeats: int) -> float:
    """Mean wall seconds of ``fn()`` over ``repeats`` calls, all ranks synchronised."""
    import torch
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    dist.barrier()
    return (time.perf_counter() - start) / repeats


class AttentionClock:
    """Wall time inside every layer's core attention during real training steps, forward and backward.

    Uses only torch's public hooks: a forward pre-hook and hook time the forward; a gradient hook on the
    output marks the start of its backward and gradient hooks on query/key/value its end (CPU autograd runs
    synchronously on the calling thread; on GPU the device is synchronised first).
    """

    def __init__(self, model) -> None:
        import torch

        self.seconds = 0.0
        self._sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
        for layer in model.decoder.layers:
            core = layer.self_attention.core_attention
            core.register_forward_pre_hook(self._before)
            core.register_forward_hook(self._after)

    def _now(self) -> float:
        self._sync()
        return time.perf_counter()

    def _before(self, module, args) -> None:
        self._start = self._now()
        inputs = [t for t in args[:3] if t.requires_grad]
        pending = {"left": len(inputs)}

        def input_grad(grad):
            pending["left"] -= 1
            if pending["left"] == 0:  # the last of dq, dk, dv: this layer's attention backward is done
                self.seconds += self._now() - pending["start"]
            return grad

        for t in inputs:
            t.register_hook(input_grad)
        self._pending = pending

    def _after(self, module, args, output) -> None:
        self.seconds += self._now() - self._start
        pending = self._pending
        if output.requires_grad:

            def output_grad(grad):
                pending["start"] = self._now()
                return grad

            output.register_hook(output_grad)


def worker(argv: list[str], out_path: str, steps: int) -> None:
    """Inside torchrun: time training steps, then attention and gradient all-reduce alone."""
    import torch
    import torch.distributed as dist

    from megatron_anchor.training import build_run, init_distributed, parse_args, teardown_distributed
    from megatron_anchor.training.loop import train_step

    args = parse_args(argv, int(os.environ.get("WORLD_SIZE", "1")))
    dims = init_distributed(args.tensor_model_parallel_size, args.context_parallel_size)
    run = build_run(args, dims)
    train_step(run, 0)  # warm-up
    clock = AttentionClock(run.raw_model)
    step = _timed(lambda: [train_step(run, s) for s in range(1, steps + 1)], 1) / steps
    attention = clock.seconds / steps
    grads = torch.zeros(sum(p.numel() for p in run.raw_model.parameters()), device=run.device)
    group = dims.dp_cp_group
    comm = _timed(lambda: dist.all_reduce(grads, group=group), steps) if dims.dp * dims.cp > 1 else 0.0
    if dims.rank == 0:
        tokens = args.global_batch_size * args.seq_length
        result = {"step_s": step, "attention_s": attention, "comm_s": comm, "tokens_per_s": tokens / step}
        Path(out_path).write_text(json.dumps(result))
    teardown_distributed()


def launch(flags: list[str], nproc: int, steps: int) -> dict:
    """Run one configuration under torchrun; returns the rank-0 timings."""
    out = Path(tempfile.mkdtemp()) / "result.json"
    run_worker(__file__, ["--worker", str(out), "--steps", str(steps), "--", *flags], nproc)
    return json.loads(out.read_text())


def main() -> None:
    """Run the grid and print the table with ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller model, one timed step")
    p.add_argument("--seq-lengths", type=int, nargs="+", default=[4096, 8192])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("trainer_flags", nargs="*", help=argparse.SUPPRESS)
    a = p.parse_args()
    steps = a.steps or (1 if a.quick else 3)
    if a.worker:
        worker(a.trainer_flags, a.worker, steps)
        return
    rows = {}
    for s in a.seq_lengths:
        for mode in ("causal", "anchor"):
            for cp in (1, 2):
                r = launch(model_flags(a.quick, s, mode, cp), cp, steps)
                rows[s, mode, cp] = r
                rest = r["step_s"] - r["attention_s"] - r["comm_s"]
                print(
                    f"S={s:5d} {mode:6s} CP={cp}: {r['tokens_per_s']:8.0f} tok/s  step {r['step_s']:.3f}s = "
                    f"attention {r['attention_s']:.3f} + comm {r['comm_s']:.3f} + rest {rest:.3f}",
                    flush=True,
                )
    print("\nratios (tokens/s):")
    for s in a.seq_lengths:
        for cp in (1, 2):
            ratio = rows[s, "anchor", cp]["tokens_per_s"] / rows[s, "causal", cp]["tokens_per_s"]
            attn = rows[s, "anchor", cp]["attention_s"] / rows[s, "causal", cp]["attention_s"]
            print(f"S={s:5d} CP={cp}: anchor/causal throughput {ratio:.2f}x, attention time {attn:.2f}x")
        for mode in ("causal", "anchor"):
            ratio = rows[s, mode, 2]["tokens_per_s"] / rows[s, mode, 1]["tokens_per_s"]
            print(f"S={s:5d} {mode:6s}: CP=2/CP=1 throughput {ratio:.2f}x (2 processes on the same cores)")


if __name__ == "__main__":
    main()
