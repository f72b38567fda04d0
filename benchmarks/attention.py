"""Anchor vs causal ring attention on CPU: speed-up against the ideal, FLOP floor, CP scaling, peak memory.

    python benchmarks/attention.py            # S = 8K/16K timings, memory at 8K/16K/32K (minutes)
    python benchmarks/attention.py --quick    # small shapes, seconds

Documents: log-normal lengths (median ~1K tokens) around one document of S/2. The ideal anchor speed-up is
causal's visible (query, key) pairs over anchor's. With CP the anchor runs in each ``--layouts`` layout
(causal always in megatron-core's, which balances causal work): megatron-core's layout does not balance
documents, so the busiest rank's ideal is shown too (the ring waits for it); the balanced layout gives
every rank the same work. The plan is built once per sample, outside the timing, as training builds it once
per micro-batch for every layer. The FLOP floor is 4*h*d flops per pair forward and 10*h*d backward at the
matmul rate measured here. Each CP size runs in its own gloo group (threads per rank = cores / cp).
Timings are the minimum over ``--repeat`` runs, slowest rank.

``--comm-types``: at cp > 1 the anchor attention (balanced layout, forward+backward) also runs with each
``--cp-comm-type``: ``a2a`` (all-to-all over the CP group, then the whole sample per rank) and, at cp = 4,
``a2a+p2p`` as 2 x 2; printed as the time of each type over ``p2p``'s (lower is faster).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from doc_mixes import realistic_doc_ids  # benchmarks/doc_mixes.py, beside this file

from megatron_anchor.attention import anchor_cp_attention, build_attention_plan
from megatron_anchor.parallel import free_port, rank_work, visible_pairs
from megatron_anchor.parallel.comm_types import (
    CP_COMM_TYPES,
    comm_type_groups,
    cp_degrees,
    hierarchical_groups,
)
from megatron_anchor.parallel.cp_layout import batch_cp_index, shard_for_cp


def layout_of(doc_ids: torch.Tensor, mode: str, cp: int, layout: str) -> torch.Tensor:
    """``[1, cp, S / cp]``: causal in megatron-core's layout, the anchor in ``layout``."""
    return batch_cp_index(doc_ids, cp, "megatron" if mode == "causal" else layout, mode)


def visible_and_busiest(doc_ids: torch.Tensor, mode: str, index: torch.Tensor) -> tuple[int, int]:
    """Visible pairs of the sample, and of the busiest CP rank's queries (the ring waits for that rank)."""
    return visible_pairs(doc_ids, mode), int(rank_work(doc_ids[0], index[0], mode).max())


def matmul_rate(dtype: torch.dtype, trials: int = 5) -> float:
    """Best fp matmul rate (FLOP/s) of attention-shaped batched products on this machine."""
    a, b = torch.randn(8, 1024, 128, dtype=dtype), torch.randn(8, 128, 1024, dtype=dtype)
    best = float("inf")
    for _ in range(trials):
        start = time.perf_counter()
        torch.bmm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * 8 * 1024 * 1024 * 128 / best


def _timed(fn, repeat: int) -> float:
    """Minimum wall time over ``repeat`` runs, slowest rank."""
    best = float("inf")
    for _ in range(repeat):
        dist.barrier()
        start = time.perf_counter()
        fn()
        elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
        dist.all_reduce(elapsed, dist.ReduceOp.MAX)
        best = min(best, elapsed.item())
    return best


def _inputs(doc_ids, args, rank: int, index: torch.Tensor, grad: bool):
    gen = torch.Generator().manual_seed(1)
    seq_len = doc_ids.shape[1]
    shapes = [(seq_len, 1, args.heads, args.dim)] + [(seq_len, 1, args.heads_kv, args.dim)] * 2
    full = [torch.randn(s, generator=gen, dtype=getattr(torch, args.dtype)) for s in shapes]
    return [shard_for_cp(t, index, rank, seq_dim=0).requires_grad_(grad) for t in full]


def _forward_backward(call) -> None:
    call().sum().backward()


def time_modes(args, seq_len: int, rank: int, world: int, layout: str) -> dict:
    """Forward and forward+backward seconds of causal and anchor at one S (same kernel, same inputs)."""
    doc_ids = realistic_doc_ids(seq_len)
    # The matmul rate all ranks get together, measured concurrently just before: the floor's yardstick.
    dist.barrier()
    rate = torch.tensor([matmul_rate(getattr(torch, args.dtype))])
    dist.all_reduce(rate)
    result = {"rate": rate.item()}
    for mode in ("causal", "anchor"):
        index = layout_of(doc_ids, mode, world, layout)
        q, k, v = _inputs(doc_ids, args, rank, index, grad=True)
        start = time.perf_counter()
        plan = build_attention_plan(doc_ids, mode, cp_size=world, rank=rank, cp_index=index)
        plan_ms = 1e3 * (time.perf_counter() - start)
        group, backend = dist.group.WORLD, args.backend
        call = functools.partial(anchor_cp_attention, q, k, v, plan=plan, cp_group=group, backend=backend)
        with torch.no_grad():
            fwd = _timed(call, args.repeat)
        both = _timed(functools.partial(_forward_backward, call), args.repeat)
        counts = torch.tensor([plan.stats.rows_sent, plan.stats.idle_steps, plan_ms])
        dist.all_reduce(counts)
        visible, busiest = visible_and_busiest(doc_ids, mode, index)
        result[mode] = {
            "fwd": fwd,
            "fwd_bwd": both,
            "visible": visible,
            "busiest_rank": busiest,
            "rows_sent": int(counts[0]),
            "idle_steps": int(counts[1]),
            "max_calls_per_step": max(len(step.calls) for step in plan.steps),
            "plan_ms": float(counts[2]) / world,
        }
    return result


def comm_groups(world: int) -> dict[str, tuple]:
    """``{comm type: (ring group, all-to-all group, A)}``; a2a+p2p as 2 x (world / 2) from 4 ranks."""
    sizes = [2, world // 2] if world >= 4 else None
    hierarchical = sizes and hierarchical_groups(dist.get_rank(), list(range(world)), 2, dist.new_group)
    return {
        comm: (
            *comm_type_groups(comm, dist.group.WORLD, hierarchical),
            cp_degrees(comm, world, sizes if comm == "a2a+p2p" else None).a2a,
        )
        for comm in CP_COMM_TYPES
        if comm != "a2a+p2p" or sizes
    }


def time_comm_types(args, seq_len: int, rank: int, world: int, groups: dict) -> dict:
    """Anchor forward+backward seconds under each comm type (balanced layout over the ring's groups)."""
    doc_ids = realistic_doc_ids(seq_len)
    result = {}
    for comm in args.comm_types:
        if comm not in groups or args.heads % groups[comm][2]:
            continue
        ring, a2a, size = groups[comm]
        index = batch_cp_index(doc_ids, world, "balanced", "anchor", size)
        q, k, v = _inputs(doc_ids, args, rank, index, grad=True)
        ring_rank = 0 if ring is None else dist.get_rank(ring)
        plan = build_attention_plan(
            doc_ids, "anchor", cp_size=world // size, rank=ring_rank, cp_index=index, a2a_size=size
        )
        call = functools.partial(
            anchor_cp_attention, q, k, v, plan=plan, cp_group=ring, a2a_group=a2a, backend=args.backend
        )
        result[comm] = _timed(functools.partial(_forward_backward, call), args.repeat)
    return result


def peak_memory(args, seq_len: int, rank: int, world: int, layout: str) -> float:
    """Peak RSS (MiB) of this rank over one anchor forward+backward at ``seq_len``, above the RSS before."""
    doc_ids = realistic_doc_ids(seq_len)
    with open("/proc/self/statm") as f:  # resident pages now; ru_maxrss below is the peak since start
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    index = layout_of(doc_ids, "anchor", world, layout)
    q, k, v = _inputs(doc_ids, args, rank, index, grad=True)
    group = dist.group.WORLD
    out = anchor_cp_attention(q, k, v, doc_ids, cp_group=group, cp_index=index, backend=args.backend)
    out.sum().backward()
    grown = torch.tensor([(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0])
    dist.all_reduce(grown, dist.ReduceOp.MAX)
    return grown.item()


def _worker(rank: int, world: int, port: int, args, path: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    result = {}
    layouts = args.layouts if world > 1 else ["megatron"]
    time_modes(args, 256 * world, rank, world, layouts[0])  # warm-up: thread pools, gloo connections
    if world in args.mem_cps:  # first, ascending S: ru_maxrss only grows, so each peak belongs to its own S
        result["memory"] = {s: peak_memory(args, s, rank, world, layouts[-1]) for s in sorted(args.mem_seqs)}
    result["time"] = {
        name: {s: time_modes(args, s, rank, world, name) for s in args.seqs} for name in layouts
    }
    if world > 1 and args.comm_types:
        groups = comm_groups(world)
        result["comm"] = {s: time_comm_types(args, s, rank, world, groups) for s in args.seqs}
    if rank == 0:
        with open(path, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def run_group(world: int, args) -> dict:
    """Run every measurement in a fresh ``world``-process gloo group."""
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, free_port(), args, f"{tmp}/r.json"), nprocs=world, join=True)
        with open(f"{tmp}/r.json") as f:
            return json.load(f)


def report(results: dict, args) -> None:
    """Print the side-by-side tables."""
    per_pair = {"fwd": 4 * args.heads * args.dim, "fwd_bwd": 14 * args.heads * args.dim}
    print(
        f"\n{args.dtype}, h={args.heads} h_kv={args.heads_kv} d={args.dim}, backend={args.backend}; "
        f"floor from the matmul rate measured before each row (GFLOP/s, all ranks together)"
    )
    print(
        f"\n{'S':>6} {'cp':>3} {'layout':>9} {'pass':>8} {'causal s':>9} {'anchor s':>9} {'speed-up':>9} "
        f"{'ideal':>6} {'% ideal':>8} {'ideal(busiest rank)':>20} {'%':>5} {'GFLOP/s':>8} "
        f"{'anchor floor s':>15} {'x floor':>8}"
    )
    for cp, res in results.items():
        for layout, by_seq in res["time"].items():
            for s, by_mode in by_seq.items():
                causal, anchor, rate = by_mode["causal"], by_mode["anchor"], by_mode["rate"]
                ideal = causal["visible"] / anchor["visible"]
                ideal_rank = causal["busiest_rank"] / anchor["busiest_rank"]
                for key in ("fwd", "fwd_bwd"):
                    speedup = causal[key] / anchor[key]
                    floor = per_pair[key] * anchor["visible"] / rate
                    print(
                        f"{s:>6} {cp:>3} {layout:>9} {key:>8} {causal[key]:9.3f} {anchor[key]:9.3f} "
                        f"{speedup:9.2f} {ideal:6.2f} {100 * speedup / ideal:7.0f}% {ideal_rank:20.2f} "
                        f"{100 * speedup / ideal_rank:4.0f}% {rate / 1e9:8.0f} {floor:15.3f} "
                        f"{anchor[key] / floor:8.2f}"
                    )
    print("\nanchor per ring step and per plan (all ranks together unless said)")
    for cp, res in results.items():
        for layout, by_seq in res["time"].items():
            for s, by_mode in by_seq.items():
                a = by_mode["anchor"]
                print(
                    f"  S={s:>6} cp={cp} {layout:>9}: {1e6 * a['fwd_bwd'] / int(s):7.1f} us/token fwd+bwd, "
                    f"kernel calls per ring step <= {a['max_calls_per_step']}, "
                    f"K/V rows sent {a['rows_sent']}, "
                    f"idle ring steps {a['idle_steps']}, plan build {a['plan_ms']:.1f} ms per rank"
                )
    comm_report(results, args)
    for cp, res in results.items():
        if "memory" in res:
            mem = "  ".join(f"S={s}: {mib:7.0f} MiB" for s, mib in res["memory"].items())
            print(f"\npeak RSS growth per rank, anchor fwd+bwd, cp={cp}: {mem}")


def comm_report(results: dict, args) -> None:
    """Each comm type's anchor forward+backward time over p2p's, per S and cp."""
    rows = [(cp, s, by_type) for cp, res in results.items() for s, by_type in res.get("comm", {}).items()]
    if not rows:
        return
    print("\nanchor fwd+bwd by --cp-comm-type (balanced layout): seconds, and the time over p2p's")
    print(f"{'S':>6} {'cp':>3} " + " ".join(f"{c:>17}" for c in args.comm_types))
    for cp, s, by_type in rows:
        cells = [
            f"{by_type[c]:7.3f} s {by_type[c] / by_type['p2p']:5.2f}x" if c in by_type else f"{'-':>17}"
            for c in args.comm_types
        ]
        print(f"{s:>6} {cp:>3} " + " ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes (S=2K/4K, memory at 2K/4K/8K)")
    parser.add_argument("--seqs", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--mem-seqs", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--cps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--mem-cps", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--layouts", nargs="+", default=["megatron", "balanced"], help="CP layouts at cp > 1")
    parser.add_argument(
        "--comm-types", nargs="*", default=["p2p", "a2a", "a2a+p2p"], help="--cp-comm-type columns at cp > 1"
    )
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--heads-kv", type=int, default=4)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.seqs, args.mem_seqs, args.heads, args.heads_kv, args.dim = (
            [2048, 4096],
            [2048, 4096, 8192],
            4,
            2,
            64,
        )
    start = time.perf_counter()
    results = {cp: run_group(cp, args) for cp in args.cps}
    report(results, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s. The CPU may be shared: compare ratios, not seconds.")


if __name__ == "__main__":
    main()
