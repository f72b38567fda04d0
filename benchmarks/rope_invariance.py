"""RoPE precision and cost: logit shift-invariance of four RoPE paths, apply cost, DPRoPE disturbances.

    python benchmarks/rope_invariance.py [--quick] [--seq 256] [--heads 8]

1. Relative-position invariance (SPEC section 4 at logit level): mean |logit(delta+i, delta+j) -
   logit(16+i, 16+j)| over causal pairs of random q, k, for this project's RoPE, megatron-core's unfused
   path, plain fp32 angles (TE fused kernel with an fp32 freqs table) and fp64; fp32 and bf16 inputs.
2. Cost of one apply on [s, 1, h, 128] bf16 (CPU timings; ratios to megatron-core's unfused path).
3. DPRoPE vs the other strategies on LLaMA-2's RoPE (base 10000, head dim 128), with wall time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import torch

# Runnable from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_anchor.rope import compute_inv_freq, rope_distribution_report, rotary_angles  # noqa: E402
from megatron_anchor.rope.invariance import PATHS, ROPE_PATHS, deviation_table  # noqa: E402

DELTAS = (4096, 65536, 262144)


def invariance_section(seq: int, heads: int) -> None:
    """Print the deviation of each path side by side, and each path's ratio to this project's."""
    table = deviation_table(DELTAS, (torch.float32, torch.bfloat16), seq=seq, heads=heads)
    print(f"\n1. logit shift deviation, q/k [{seq}, 1, {heads}, 128], base 10000 (lower is better)")
    header = " ".join(f"{p:>17}" for p in PATHS)
    print(f"{'input':>9} {'delta':>7} {header}   megatron/anchor  fp32ang/anchor")
    for (dtype, delta), row in table.items():
        cells = " ".join(f"{row[p]:17.3e}" for p in PATHS)
        ratios = f"{row['megatron_unfused'] / row['anchor']:17.2f} {row['fp32_angles'] / row['anchor']:15.2f}"
        print(f"{dtype:>9} {delta:>7} {cells} {ratios}")


def time_call(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def cost_section(seq: int, heads: int, repeats: int) -> None:
    """Time each path's apply on one bf16 tensor; the anchor path includes building its fp64 angle table."""
    t = torch.randn(seq, 1, heads, 128).to(torch.bfloat16)
    positions = torch.arange(seq) + 100_000
    timings = {p: time_call(lambda p=p: ROPE_PATHS[p](t, positions, 10000.0), repeats) for p in PATHS}
    inv_freq, _ = compute_inv_freq(10000.0, 128)
    angle_table = time_call(lambda: rotary_angles(positions, inv_freq), repeats)
    print(f"\n2. apply cost, bf16 [{seq}, 1, {heads}, 128], CPU, median of {repeats}")
    for p in PATHS:
        ratio = timings[p] / timings["megatron_unfused"]
        print(f"{p:>17}: {timings[p] * 1e3:8.2f} ms  ({ratio:.2f}x megatron-core unfused)")
    print(f"{'fp64 angle table':>17}: {angle_table * 1e3:8.2f} ms  (part of the anchor path, once per step)")


def dprope_section() -> None:
    """DPRoPE on LLaMA-2's RoPE at 4K->8K (80 dims) and 4K->16K (64 dims)."""
    print("\n3. rotary-angle distribution disturbance, LLaMA-2 RoPE, 360 bins (lower is better)")
    names = ("extrapolation", "pi", "ntk", "yarn", "dprope")
    print(f"{'extension':>14} " + " ".join(f"{n[:8]:>8}" for n in names) + "  cut vs PI  seconds")
    for target, dims in ((8192, 80), (16384, 64), (16384, None)):
        start = time.perf_counter()
        d = rope_distribution_report(10000.0, 128, 4096, target, 360, dims).disturbance
        seconds = time.perf_counter() - start
        label = f"4K->{target // 1024}K/{dims or 'all+'}"
        cells = " ".join(f"{d[k]:8.4f}" for k in names)
        print(f"{label:>14} {cells}  {1 - d['dprope'] / d['pi']:8.1%}  {seconds:7.3f}")


def main() -> None:
    """Run the three sections (smaller with --quick)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--heads", type=int, default=None)
    args = parser.parse_args()
    seq = args.seq or (128 if args.quick else 512)
    heads = args.heads or (4 if args.quick else 8)
    warnings.filterwarnings("ignore", message=".*Transformer Engine and Apex are not installed.*")
    invariance_section(seq, heads)
    cost_section(seq * 8, heads, repeats=3 if args.quick else 10)
    dprope_section()


if __name__ == "__main__":
    main()
