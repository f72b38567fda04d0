"""Per-rank memory and communication of one training step, measured on CPU, and projected to the recipes.

    python benchmarks/memory.py            # S = 8K/16K/32K, TP=2 with/without SP, FSDP2 fp32/bf16 (minutes)
    python benchmarks/memory.py --quick    # S = 4K/8K only

A small Llama-shape model (4 layers, hidden 256, SwiGLU 688, 4 heads / 2 KV heads, vocabulary 2048) trains
one step on synthetic packed samples under torchrun (2 gloo processes), after one step on zero gradients
has created Adam's state. Measured, per rank:
- memory: torch's ``MemTracker`` (``FSDPMemTracker`` under FSDP2) follows every tensor the step allocates;
  the peak is split into parameters (FSDP2: sharded fp32 + gathered copies), gradients, optimizer state and
  activations (everything else: saved for backward, temporaries); also the activations still held when
  forward ends and the decoder's forward growth per layer. DDP's C++ gradient buckets are invisible to it.
- communication: ``torch.distributed``'s collectives are wrapped before megatron-core is imported, and every
  call's tensor bytes (the gathered output, the reduced input) are summed per collective and group.

The TP runs take the recipes' loss, ``--cross-entropy-chunk-size`` (``CHUNK`` tokens), and once without
it. The accounting of ``memory_model.py`` (bytes per token of what each layer keeps for backward, plus
parameter, gradient and optimizer state per rank) is printed beside the measurements and then projects the
README's recipes on H100 80 GB, with bf16 activations and this implementation's saved tensors (Transformer
Engine's fused norm+linear and SwiGLU keep less: an upper bound there).
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

from memory_model import (  # benchmarks/memory_model.py, beside this file
    BENCH,
    CHUNK,
    MiB,
    activation_bytes,
    layer_elements_per_token,
    print_projection,
    print_table,
)
from torchrun_job import run_worker  # benchmarks/torchrun_job.py (puts the repo on the path)

from megatron_anchor.training.model_args import LLAMA_ARCHITECTURE_FLAGS

CATEGORIES = {  # tracker categories -> the four reported ones
    "params": ("Parameter", "Sharded Param", "Unsharded Param", "All Gather", "Buffer"),
    "grads": ("Gradient", "Sharded Grad", "Unsharded Grad", "Reduce Scatter"),
    "optimizer": ("Optstate", "OptState"),
}
COLLECTIVES = {  # torch.distributed function -> (argument holding the tensor(s), reported name)
    "all_reduce": ("tensor", "all-reduce"),
    "all_gather_single": ("output_tensor", "all-gather"),  # all_gather_into_tensor calls it
    "reduce_scatter_single": ("input", "reduce-scatter"),  # reduce_scatter_tensor calls it
    "all_gather": ("tensor_list", "all-gather"),
    "reduce_scatter": ("input_list", "reduce-scatter"),
    "broadcast": ("tensor", "broadcast"),
    "all_to_all_single": ("input", "all-to-all"),
    "send": ("tensor", "send"),
    "isend": ("tensor", "send"),
}


# ---- inside torchrun -------------------------------------------------------------------------------------


def install_collective_counters(log: list) -> None:
    """Wrap torch.distributed's collectives so each call appends (name, bytes, group ranks) to ``log``."""
    import torch.distributed as dist
    import torch.distributed.distributed_c10d as c10d

    for fn_name, (arg, name) in COLLECTIVES.items():
        original = getattr(c10d, fn_name)
        signature = inspect.signature(original)

        @functools.wraps(original)
        def counted(*args, _original=original, _signature=signature, _arg=arg, _name=name, **kwargs):
            bound = _signature.bind(*args, **kwargs).arguments
            tensors = bound[_arg] if isinstance(bound[_arg], (list, tuple)) else [bound[_arg]]
            ranks = tuple(dist.get_process_group_ranks(bound.get("group") or dist.group.WORLD))
            if len(ranks) > 1:  # a one-rank group moves nothing
                log.append((_name, sum(t.nbytes for t in tensors), ranks))
            return _original(*args, **kwargs)

        setattr(c10d, fn_name, counted)
        setattr(dist, fn_name, counted)


def _split(snapshot: dict) -> dict:
    """A tracker snapshot (one device) -> params/grads/optimizer/activations/total bytes."""
    out = {
        k: sum(v for c, v in snapshot.items() if str(getattr(c, "value", c)) in names)
        for k, names in CATEGORIES.items()
    }
    out["total"] = snapshot["Total"]
    out["activations"] = out["total"] - out["params"] - out["grads"] - out["optimizer"]
    return out


def _snapshot_at(stats, names: tuple[str, ...]) -> dict:
    """A module's snapshot (one device) at the first of ``names`` it recorded, in its first call."""
    for state, snaps in stats.snapshots.items():
        if state.value in names:
            return next(iter(snaps[0].values()))
    raise KeyError(names)


def measure_step(run, log: list) -> dict:
    """One tracked ``train_step`` on a run whose Adam state exists; the rank's memory and traffic."""
    import torch
    from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker
    from torch.distributed._tools.mem_tracker import MemTracker

    from megatron_anchor.training.loop import train_step

    for p in run.model.parameters():  # Adam's moments appear at the first step: take it on zero gradients
        p.grad = torch.zeros_like(p)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    fsdp = run.args.use_distributed_optimizer
    tracker = FSDPMemTracker(run.model, run.optimizer) if fsdp else MemTracker()
    tracker.track_external(run.model, run.optimizer)
    log.clear()
    with tracker:
        train_step(run, 0)
    result = _split(next(iter(tracker.get_tracker_snapshot("peak").values())))
    root = tracker.memory_tracking[run.raw_model]
    result["kept"] = _snapshot_at(root, ("Post-Forward", "After Post-Forward"))["Activation"]
    if not fsdp:  # the decoder's forward growth per layer; in totals (AC moves tensors between categories)
        layers = [tracker.memory_tracking[m] for m in _transformer_layers(run.raw_model)]
        before = _snapshot_at(layers[0], ("Pre-Forward",))["Total"]
        result["per_layer"] = (_snapshot_at(layers[-1], ("Post-Forward",))["Total"] - before) / len(layers)
    traffic = defaultdict(int)
    for name, nbytes, ranks in log:
        traffic[f"{name} {_group_name(ranks)}"] += nbytes
    result["traffic"] = dict(traffic)
    return result


def _transformer_layers(model) -> list:
    from megatron.core.transformer.transformer_layer import TransformerLayer

    return [m for m in model.modules() if isinstance(m, TransformerLayer)]


def _group_name(ranks: tuple) -> str:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    for name, group in (
        ("TP", ps.get_tensor_model_parallel_group()),
        ("DPxCP", ps.get_data_parallel_group(True)),
    ):
        if ranks == tuple(dist.get_process_group_ranks(group)):
            return name
    return "other"


def worker(configs_path: str, out_path: str) -> None:
    """Inside torchrun: measure each configuration of ``configs_path`` in turn; rank 0 writes the results."""
    log: list = []
    install_collective_counters(log)  # before megatron-core binds torch.distributed's functions
    from megatron_anchor.training import build_run, init_distributed, parse_args, teardown_distributed

    configs = json.loads(Path(configs_path).read_text())
    world = int(os.environ["WORLD_SIZE"])
    results = []
    for config in configs:
        args = parse_args(config["flags"], world)
        dims = init_distributed(args.tensor_model_parallel_size, args.context_parallel_size)
        run = build_run(args, dims)
        results.append(dict(config, **measure_step(run, log)))
        del run
        gc.collect()
    if dims.rank == 0:
        Path(out_path).write_text(json.dumps(results))
    teardown_distributed()


# ---- the driver --------------------------------------------------------------------------------------------


def trainer_flags(seq: int, *extra: str) -> list[str]:
    """Flags of the benchmark model at sequence length ``seq``, one sample per step."""
    s = BENCH
    return [
        "--num-layers", str(s.layers), "--hidden-size", str(s.hidden), "--ffn-hidden-size", str(s.ffn),
        "--num-attention-heads", str(s.heads), "--num-query-groups", str(s.kv_heads),
        "--vocab-size", str(s.vocab), "--seq-length", str(seq), "--micro-batch-size", "1",
        "--train-iters", "1", "--mock-data", *LLAMA_ARCHITECTURE_FLAGS, *extra,
    ]  # fmt: skip


def grids(seqs: list[int]) -> tuple[list[dict], list[dict]]:
    """(TP=2 configurations with and without SP, FSDP2 configurations at DP=2 with fp32 and bf16 policies).

    Full recompute and the chunked loss (the recipes' settings) at every length; at the middle one also
    the whole-sequence loss, and no and selective recompute.
    """
    middle = seqs[len(seqs) // 2]
    runs = [(s, "full", CHUNK) for s in seqs] + [(middle, "full", 0)]
    tp = []
    for seq, recompute, chunk in runs + [(middle, "none", CHUNK), (middle, "selective", CHUNK)]:
        for sp in (False, True):
            extra = ["--tensor-model-parallel-size", "2", "--cross-entropy-chunk-size", str(chunk)]
            extra += ["--sequence-parallel"] if sp else []
            extra += [] if recompute == "none" else ["--recompute-granularity", recompute]
            config = {"seq": seq, "recompute": recompute, "chunk": chunk, "sp": sp}
            tp.append(dict(config, flags=trainer_flags(seq, *extra)))
    sharded = ["--use-distributed-optimizer", "--recompute-granularity", "full"]
    fsdp = [
        {
            "seq": seqs[0],
            "bf16": bf16,
            "flags": trainer_flags(seqs[0], *sharded, *(["--bf16"] if bf16 else [])),
        }
        for bf16 in (False, True)
    ]
    return tp, fsdp


def launch(configs: list[dict], nproc: int = 2) -> list[dict]:
    """Measure ``configs`` in one torchrun job; returns rank 0's results."""
    work = Path(tempfile.mkdtemp())
    (work / "configs.json").write_text(json.dumps(configs))
    argv = ["--worker", str(work / "configs.json"), str(work / "results.json")]
    run_worker(__file__, argv, nproc, OMP_NUM_THREADS="1")
    return json.loads((work / "results.json").read_text())


def _split_mib(r: dict) -> list[float]:
    return [r[k] / MiB for k in ("params", "grads", "optimizer", "activations", "total")]


def print_tensor_parallel(rows: list[dict]) -> None:
    """Memory split and traffic of TP=2 with/without SP, beside the accounting; SP / no-SP ratios."""
    print("\nTP=2, one rank, MiB. Split of the peak; 'kept' = activations held when forward ends; 'layer' =")
    print("the decoder's forward growth per layer; 'acc' = the accounting; traffic = TP collectives per")
    print(f"step; loss = --cross-entropy-chunk-size ({CHUNK}) or 'whole' (megatron-core's whole loss)")
    table, by_key = [], {}
    for r in rows:
        recompute = None if r["recompute"] == "none" else r["recompute"]
        kept, peak = activation_bytes(BENCH, r["seq"], 2, r["sp"], recompute, 4, r["chunk"])
        layer = r["seq"] * 4 * layer_elements_per_token(BENCH, 2, r["sp"], recompute)
        traffic = {k.split()[0]: v / MiB for k, v in r["traffic"].items() if k.endswith(" TP")}
        loss = r["chunk"] or "whole"
        table.append(
            [r["seq"], r["recompute"], loss, "on" if r["sp"] else "off", *_split_mib(r), peak / MiB]
            + [r["kept"] / MiB, kept / MiB, r["per_layer"] / MiB, layer / MiB]
            + [traffic.get(k, 0.0) for k in ("all-reduce", "all-gather", "reduce-scatter")]
        )
        by_key[r["seq"], r["recompute"], loss, r["sp"]] = r
    header = ["S", "recompute", "loss", "SP", "params", "grads", "optim", "activ", "total", "activ acc"]
    header += ["kept", "kept acc", "layer", "layer acc", "all-reduce", "all-gather", "reduce-scatter"]
    print_table(header, table)
    print("\nSP / no SP at TP=2, measured; 'kept' is the activation memory (held from forward to backward),")
    print("'activ at peak' adds the backward's working memory (a recomputed layer); wire = TP bytes a ring")
    print("moves per rank (all-reduce 2(n-1)/n, all-gather and reduce-scatter (n-1)/n of the buffer):")
    ratios = []
    for (seq, recompute, loss, sp), r in by_key.items():
        off = by_key[seq, recompute, loss, False]
        if sp:
            measured = [r[k] / off[k] for k in ("per_layer", "kept", "activations", "total")]
            ratios.append([seq, recompute, loss, *(f"{x:.2f}x" for x in measured + [_wire(r) / _wire(off)])])
    header = ["S", "recompute", "loss", "layer", "kept", "activ at peak", "peak total", "TP wire bytes"]
    print_table(header, ratios)


def _wire(r: dict, n: int = 2) -> float:
    """Bytes a ring moves per rank for the TP collectives of a result (group size ``n``)."""
    share = {"all-reduce": 2 * (n - 1) / n, "all-gather": (n - 1) / n, "reduce-scatter": (n - 1) / n}
    return sum(share[k.split()[0]] * v for k, v in r["traffic"].items() if k.endswith(" TP"))


def print_fsdp(rows: list[dict]) -> None:
    """FSDP2 at DP=2: fp32 parameters against the bf16 policy (fp32 gradient reduction in both)."""
    print("\nFSDP2, DP=2, full recompute, one rank, MiB; traffic = DP collectives per step")
    table = []
    for r in rows:
        t = r["traffic"]
        gathered, reduced = t.get("all-gather DPxCP", 0) / MiB, t.get("reduce-scatter DPxCP", 0) / MiB
        table.append(["bf16" if r["bf16"] else "fp32", r["seq"], *_split_mib(r), gathered, reduced])
    print_table(
        ["policy", "S", "params", "grads", "optim", "activ", "total", "all-gather", "reduce-scatter"], table
    )
    fp32, bf16 = rows
    ag = bf16["traffic"]["all-gather DPxCP"] / fp32["traffic"]["all-gather DPxCP"]
    rs = bf16["traffic"]["reduce-scatter DPxCP"] / fp32["traffic"]["reduce-scatter DPxCP"]
    peak = bf16["total"] / fp32["total"]
    print(f"bf16 / fp32: all-gather bytes {ag:.3f}x, reduce-scatter bytes {rs:.3f}x, peak {peak:.2f}x")


def main() -> None:
    """Measure the grids, print the tables and the projection."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="S = 4K and 8K only")
    p.add_argument("--seq-lengths", type=int, nargs="+", default=None)
    p.add_argument("--worker", nargs=2, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    seqs = a.seq_lengths or ([4096, 8192] if a.quick else [8192, 16384, 32768])
    tp_configs, fsdp_configs = grids(seqs)
    print_tensor_parallel(launch(tp_configs))
    print_fsdp(launch(fsdp_configs))
    print_projection()


if __name__ == "__main__":
    main()
