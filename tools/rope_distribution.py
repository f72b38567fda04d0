"""Rotary-angle distribution disturbance of context-extension strategies, and DPRoPE's choice (DPRoPE:
arXiv 2410.01490).

For each rotary pair, the angles ``(m * theta) mod 2 pi`` of the positions m of a length, histogrammed into
``--bins`` bins, form a distribution. A strategy disturbs pair k by KL(original over [0, L) || the strategy's
over [0, L')); DPRoPE interpolates the pairs where that lowers the disturbance most (``--interpolate-dims``
of them) and extrapolates the rest.

    python tools/rope_distribution.py --rotary-base 10000 --head-dim 128 --original-length 4096 \\
        --target-length 8192 --bins 360 --interpolate-dims 80 --json [--plot out.png] [--save rope.json]

Prints the total disturbance (mean over rotary pairs of KL(original || candidate), natural log) of
extrapolation, PI, NTK-aware, YaRN and DPRoPE, and DPRoPE's interpolated pairs. ``--save`` writes DPRoPE's
strategy in the form ``--rope-scaling`` accepts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Runnable from a checkout without installing the package (torch loads once the flags are parsed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if TYPE_CHECKING:
    from megatron_anchor.rope.dprope import DistributionReport

STRATEGIES = ("extrapolation", "pi", "ntk", "yarn", "dprope")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags of the tool (Megatron's --rotary-base / --rotary-percent names)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rotary-base", type=float, default=10000.0)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--rotary-percent", type=float, default=1.0)
    p.add_argument("--original-length", type=int, required=True, help="pre-training context L")
    p.add_argument("--target-length", type=int, required=True, help="extended context L'")
    p.add_argument("--bins", type=int, default=360)
    p.add_argument(
        "--interpolate-dims",
        type=int,
        default=None,
        help="rotary dims (two per pair) DPRoPE interpolates; default: every pair where that helps",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the angle distributions of a few pairs")
    p.add_argument("--save", type=Path, default=None, help="write DPRoPE's strategy for --rope-scaling")
    return p.parse_args(argv)


def plot_pairs(report: DistributionReport, args: argparse.Namespace) -> list[int]:
    """Write a PNG of the angle distributions of four pairs (original vs each strategy); return the pairs."""
    import matplotlib

    from megatron_anchor.rope import angle_distribution

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = report.inv_freq["original"].shape[0]
    # The pair whose period is closest to L (where strategies differ most), two below it, and the last.
    periods = 2 * math.pi / report.inv_freq["original"]
    critical = int((periods - args.original_length).abs().argmin())
    pairs = sorted({max(critical - 8, 0), max(critical - 2, 0), critical, n - 1})
    fig, axes = plt.subplots(2, 2, figsize=(12, 7.5))
    degrees = [(i + 0.5) * 360 / args.bins for i in range(args.bins)]
    styles = {"dprope": {"lw": 2.2, "ls": "--", "color": "black"}}
    for ax, k in zip(axes.flat, pairs):
        original = angle_distribution(report.inv_freq["original"][k : k + 1], args.original_length, args.bins)
        ax.fill_between(degrees, original[0].tolist(), step="mid", color="0.8", label="original, [0, L)")
        for name in STRATEGIES:
            dist = angle_distribution(report.inv_freq[name][k : k + 1], args.target_length, args.bins)[0]
            d_k = float(report.pair_disturbance[name][k])
            style = styles.get(name, {"lw": 1.2})
            ax.step(degrees, dist.tolist(), where="mid", label=f"{name}: D={d_k:.4f}", **style)
        choice = "interpolates" if k in report.dprope.interpolated_pairs else "extrapolates"
        ax.set_title(f"pair {k}: period {float(periods[k]):.0f} tokens; DPRoPE {choice}", fontsize=10)
        ax.set_xlim(0, 360)
        ax.set_xlabel("rotary angle (degrees)")
        ax.set_ylabel("share of positions per bin")
        ax.legend(fontsize=8, loc="upper right", framealpha=0.7)
    fig.suptitle(
        f"Rotary-angle distributions per pair, L={args.original_length} -> L'={args.target_length} "
        f"(base {args.rotary_base:g}, {args.bins} bins; D = KL(original || strategy))",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    plt.close(fig)
    return pairs


def main(argv: list[str] | None = None) -> int:
    """Compute, print, and optionally plot and save."""
    args = parse_args(argv)
    from megatron_anchor.rope import rope_distribution_report, rotary_dim_for

    start = time.perf_counter()
    try:
        rotary_dim = rotary_dim_for(args.head_dim, args.rotary_percent)
        report = rope_distribution_report(
            args.rotary_base, rotary_dim, args.original_length, args.target_length, args.bins,
            args.interpolate_dims,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = {
        "disturbance": {name: report.disturbance[name] for name in STRATEGIES},
        "dprope_pairs": report.dprope.interpolated_pairs,
        "dprope_dims": 2 * len(report.dprope.interpolated_pairs),
        "rotary_base": args.rotary_base,
        "rotary_dim": rotary_dim,
        "original_length": args.original_length,
        "target_length": args.target_length,
        "bins": args.bins,
    }
    if args.plot is not None:
        result["plot"], result["plot_pairs"] = str(args.plot), plot_pairs(report, args)
    if args.save is not None:
        report.dprope.save_json(args.save)
        result["saved"] = str(args.save)
    result["seconds"] = round(time.perf_counter() - start, 3)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"RoPE base {args.rotary_base:g}, rotary dim {rotary_dim}, {args.original_length} -> "
          f"{args.target_length}, {args.bins} bins")
    for name in STRATEGIES:
        print(f"  {name:>13}: disturbance {result['disturbance'][name]:.6f}")
    print(f"  DPRoPE interpolates {len(report.dprope.interpolated_pairs)} pairs: {result['dprope_pairs']}")
    for key in ("plot", "saved"):
        if key in result:
            print(f"  wrote {result[key]}")
    print(f"  done in {result['seconds']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
