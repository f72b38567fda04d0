"""Anchor vs causal ring attention on CPU: speed-up against the ideal, FLOP floor, CP scaling, peak memory.

    python benchmarks/attention.py            # S = 8K/16K timings, memory at 8K/16K/32K (minutes)
    python benchmarks/attention.py --quick    # small shapes, seconds

Layout: log-normal document lengths (median ~1K tokens) around one document of S/2. The ideal anchor
speed-up is causal's visible (query, key) pairs over anchor's; with CP, the load-balanced layout balances
causal work but not documents, so the busiest rank's ratio is shown too (the ring waits for it). The FLOP
floor is 4*h*d flops per pair forward and 10*h*d backward at the matmul rate measured here. Each CP size
runs in its own gloo group (threads per rank = cores / cp). Timings are the minimum over ``--repeat``
runs, slowest rank.
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

from megatron_anchor.attention import AttentionStats, anchor_cp_attention
from megatron_anchor.data import position_ids_from_doc_ids
from megatron_anchor.parallel.cp_layout import cp_token_index, slice_for_cp_rank
from megatron_anchor.training.metrics import visible_pairs


def slowest_rank_pairs(doc_ids: torch.Tensor, mode: str, cp: int) -> int:
    """Visible pairs of the busiest CP rank's queries: the ring waits for that rank at every step."""
    if mode == "causal":
        per_query = torch.arange(1, doc_ids.shape[1] + 1)
    else:
        # A query's reset position counts the keys of its own document it sees (the anchor sees itself).
        per_query = position_ids_from_doc_ids(doc_ids[0], "reset").clamp(min=1)
        if mode == "anchor":
            per_query = per_query + (doc_ids[0] > 0).long()
    return max(int(per_query[cp_token_index(doc_ids.shape[1], cp, r)].sum()) for r in range(cp))


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


def _inputs(doc_ids, args, rank: int, world: int, grad: bool):
    gen = torch.Generator().manual_seed(1)
    seq_len = doc_ids.shape[1]
    shapes = [(seq_len, 1, args.heads, args.dim)] + [(seq_len, 1, args.heads_kv, args.dim)] * 2
    full = [torch.randn(s, generator=gen, dtype=getattr(torch, args.dtype)) for s in shapes]
    return [slice_for_cp_rank(t, 0, world, rank).requires_grad_(grad) for t in full]


def _forward_backward(call) -> None:
    call().sum().backward()


def time_modes(args, seq_len: int, rank: int, world: int) -> dict:
    """Forward and forward+backward seconds of causal and anchor at one S (same kernel, same inputs)."""
    doc_ids = realistic_doc_ids(seq_len)
    q, k, v = _inputs(doc_ids, args, rank, world, grad=True)
    # The matmul rate all ranks get together, measured concurrently just before: the floor's yardstick.
    dist.barrier()
    rate = torch.tensor([matmul_rate(q.dtype)])
    dist.all_reduce(rate)
    result = {"rate": rate.item()}
    for mode in ("causal", "anchor"):
        stats = AttentionStats()
        call = functools.partial(
            anchor_cp_attention,
            q,
            k,
            v,
            doc_ids,
            mode=mode,
            cp_group=dist.group.WORLD,
            backend=args.backend,
            stats=stats,
        )
        with torch.no_grad():
            fwd = _timed(call, args.repeat)
        both = _timed(functools.partial(_forward_backward, call), args.repeat)
        calls = 2 * args.repeat
        counts = torch.tensor([stats.computed, stats.pairs_skipped, stats.rows_not_sent]) // calls
        dist.all_reduce(counts)
        result[mode] = {
            "fwd": fwd,
            "fwd_bwd": both,
            "visible": visible_pairs(doc_ids, mode),
            "slowest_rank": slowest_rank_pairs(doc_ids, mode, world),
            "computed": counts[0].item(),
            "pairs_skipped": counts[1].item(),
            "rows_not_sent": counts[2].item(),
        }
    return result


def peak_memory(args, seq_len: int, rank: int, world: int) -> float:
    """Peak RSS (MiB) of this rank over one anchor forward+backward at ``seq_len``, above the RSS before."""
    doc_ids = realistic_doc_ids(seq_len)
    with open("/proc/self/statm") as f:  # resident pages now; ru_maxrss below is the peak since start
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    q, k, v = _inputs(doc_ids, args, rank, world, grad=True)
    anchor_cp_attention(q, k, v, doc_ids, cp_group=dist.group.WORLD, backend=args.backend).sum().backward()
    grown = torch.tensor([(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024.0])
    dist.all_reduce(grown, dist.ReduceOp.MAX)
    return grown.item()


def _worker(rank: int, world: int, port: int, args, path: str) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    result = {}
    time_modes(args, 256 * world, rank, world)  # warm-up: thread pools, gloo connections
    if world in args.mem_cps:  # first, ascending S: ru_maxrss only grows, so each peak belongs to its own S
        result["memory"] = {s: peak_memory(args, s, rank, world) for s in sorted(args.mem_seqs)}
    result["time"] = {s: time_modes(args, s, rank, world) for s in args.seqs}
    if rank == 0:
        with open(path, "w") as f:
            json.dump(result, f)
    dist.destroy_process_group()


def run_group(world: int, args) -> dict:
    """Run every measurement in a fresh ``world``-process gloo group."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(world, port, args, f"{tmp}/r.json"), nprocs=world, join=True)
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
        f"\n{'S':>6} {'cp':>3} {'pass':>8} {'causal s':>9} {'anchor s':>9} {'speed-up':>9} {'ideal':>6} "
        f"{'% ideal':>8} {'ideal(busiest rank)':>20} {'%':>5} {'GFLOP/s':>8} {'anchor floor s':>15} "
        f"{'x floor':>8} {'x floor(tiles)':>15}"
    )
    for cp, res in results.items():
        for s, by_mode in res["time"].items():
            causal, anchor, rate = by_mode["causal"], by_mode["anchor"], by_mode["rate"]
            ideal = causal["visible"] / anchor["visible"]
            ideal_rank = causal["slowest_rank"] / anchor["slowest_rank"]
            for key in ("fwd", "fwd_bwd"):
                speedup = causal[key] / anchor[key]
                floor = per_pair[key] * anchor["visible"] / rate
                floor_tiles = per_pair[key] * anchor["computed"] / rate
                print(
                    f"{s:>6} {cp:>3} {key:>8} {causal[key]:9.3f} {anchor[key]:9.3f} {speedup:9.2f} "
                    f"{ideal:6.2f} {100 * speedup / ideal:7.0f}% {ideal_rank:20.2f} "
                    f"{100 * speedup / ideal_rank:4.0f}% {rate / 1e9:8.0f} {floor:15.3f} "
                    f"{anchor[key] / floor:8.2f} "
                    f"{anchor[key] / floor_tiles:15.2f}"
                )
    print(f"\nper-token anchor fwd+bwd time (us/token; all ranks together), cp = {list(results)}")
    for s in args.seqs:
        row = "  ".join(
            f"cp={cp}: {1e6 * res['time'][str(s)]['anchor']['fwd_bwd'] / s:8.1f}"
            for cp, res in results.items()
        )
        skipped = "  ".join(
            f"cp={cp}: {res['time'][str(s)]['anchor']['pairs_skipped']} pairs skipped, "
            f"{res['time'][str(s)]['anchor']['rows_not_sent']} rows not sent"
            for cp, res in results.items()
            if cp > 1
        )
        print(f"  S={s:>6}  {row}   ({skipped})")
    for cp, res in results.items():
        if "memory" in res:
            mem = "  ".join(f"S={s}: {mib:7.0f} MiB" for s, mib in res["memory"].items())
            print(f"\npeak RSS growth per rank, anchor fwd+bwd, cp={cp}: {mem}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small shapes (S=2K/4K, memory at 2K/4K/8K)")
    parser.add_argument("--seqs", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--mem-seqs", type=int, nargs="+", default=[8192, 16384, 32768])
    parser.add_argument("--cps", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--mem-cps", type=int, nargs="+", default=[1, 2])
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
            2,
            2,
            64,
        )
    start = time.perf_counter()
    results = {cp: run_group(cp, args) for cp in args.cps}
    report(results, args)
    print(f"\ntotal {time.perf_counter() - start:.0f} s. The CPU may be shared: compare ratios, not seconds.")


if __name__ == "__main__":
    main()
