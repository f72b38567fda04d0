"""Attention time per layer on paper: ring steps of compute and K/V traffic at stated rates, per CP layout.

    python benchmarks/scaling_model.py                       # S = 128K .. 1M, cp = 8 .. 64, two mixes
    python benchmarks/scaling_model.py --fwd-tflops 600 --ib-gbps 25 --tp 1 --mixes 1K

Work and traffic come from the layout's geometry (``SampleGeometry``), as the attention would run it: at
ring step 0 every rank computes its own rows causally (one sequence per document it holds); at step k it
receives from rank r-k only the K/V rows some local query needs and computes every visible pair against
them (``received(rank, src)``). The anchor, folded in in closed form, is left out (one key per row).

Model (every rate is a flag):
- compute: 4*h*d FLOPs per visible pair forward, 10*h*d backward (h query heads of this GPU), at the
  kernel's sustained TFLOP/s;
- traffic: rows x h_kv x d x 2 bytes x 2 (K and V) per message forward; backward moves the K/V again and
  the dK/dV (``--grad-bytes`` each) of the previous step back to their owner; each GPU sends and receives
  at once, at NVLink speed within a node and InfiniBand speed across nodes; TP is innermost, so a node
  holds gpus_per_node / tp CP ranks and every GPU of a TP group moves its own heads;
- overlap: step k's compute hides step k+1's transfer, so a step lasts max(compute, transfer) on the
  busiest rank (the ring moves in lockstep); the backward's last dK/dV transfer is exposed.
Columns per layout: forward and forward+backward milliseconds per layer, the steps whose transfer outlasts
the busiest rank's compute (forward/backward, of the cp steps, the backward's extra dK/dV step included:
0 means every transfer hides behind compute, about cp means the ring is communication-bound), and the
efficiency: the ideal (the sample's
work / cp at the kernel rate, no traffic) over the modeled time. The ring is modeled in lockstep (every
step waits for its busiest rank); ``own`` is the efficiency if each rank instead ran its steps at its own
pace (its sources post their rows early, as they are local K/V): the truth lies between the two.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np
import torch
from doc_mixes import DOCUMENT_MIXES  # benchmarks/doc_mixes.py, beside this file

from megatron_anchor.attention.geometry import SampleGeometry
from megatron_anchor.attention.reference import visible_pairs
from megatron_anchor.parallel import balanced_cp_index, megatron_cp_index


@dataclass(frozen=True)
class RingWork:
    """Per rank, per ring step: visible pairs computed and K/V rows received (one sample, one layer)."""

    pairs: np.ndarray  # [cp, cp] pairs[r, k]: rank r's visible pairs at step k (step 0: its own rows)
    rows: np.ndarray  # [cp, cp] rows[r, k]: K/V rows rank r receives at step k (from rank r - k)


def ring_work(doc_row: torch.Tensor, index: torch.Tensor, mode: str) -> RingWork:
    """Pairs and received rows of every (rank, step) of the ring under the layout ``index [cp, L]``."""
    geometry = SampleGeometry(doc_row.numpy(), index.numpy(), mode)
    cp = geometry.cp
    pairs, rows = np.zeros((cp, cp)), np.zeros((cp, cp))
    for rank in range(cp):
        local = np.diff(geometry.local_docs(rank))  # rows of each document the rank holds
        pairs[rank, 0] = (local * (local + 1) // 2).sum()
        for step in range(1, cp):
            received = geometry.received(rank, (rank - step) % cp)
            pairs[rank, step] = (received.q_len * received.key_len).sum()
            rows[rank, step] = received.rows
    # Every visible pair once: the geometry's split of the work must add up to the mask's closed form.
    expected = visible_pairs(doc_row[None], "causal" if mode == "causal" else "intra_doc")
    assert pairs.sum() == expected, f"ring pairs {pairs.sum():.0f} != visible pairs {expected}"
    return RingWork(pairs, rows)


def _link_time(args, rows: np.ndarray, row_bytes: float, step: int) -> np.ndarray:
    """``[cp]`` seconds each rank spends receiving ``rows[r]`` from rank r - step and sending to r + step."""
    cp = len(rows)
    ranks = np.arange(cp)
    node = ranks // max(1, args.gpus_per_node // args.tp)

    def seconds(peer: np.ndarray, count: np.ndarray) -> np.ndarray:
        rate = np.where(node[peer] == node, args.nvlink_gbps, args.ib_gbps) * 1e9
        return count * row_bytes / rate

    inbound = seconds((ranks - step) % cp, rows)
    outbound = seconds((ranks + step) % cp, rows[(ranks + step) % cp])  # what rank r + step receives
    return np.maximum(inbound, outbound)


def layer_time(args, work: RingWork) -> dict:
    """Forward and backward seconds of one layer, the exposed steps, and the ideal (no traffic)."""
    cp = work.pairs.shape[0]
    heads, heads_kv = args.heads / args.tp, args.heads_kv / args.tp
    kv_bytes = heads_kv * args.dim * 2 * 2  # one row of K and V, bf16
    grad_bytes = heads_kv * args.dim * args.grad_bytes * 2  # one row of dK and dV
    result = {}
    for name, flops, rate in (("fwd", 4, args.fwd_tflops), ("bwd", 10, args.bwd_tflops)):
        compute = work.pairs * flops * heads * args.dim / (rate * 1e12)  # [cp, cp] seconds
        steps = np.zeros((cp, cp + 1))  # [rank, step] seconds; the extra step: the last dK/dV
        for step in range(cp):
            moving = _link_time(args, work.rows[:, step + 1], kv_bytes, step + 1) if step + 1 < cp else 0.0
            if name == "bwd" and step > 1:  # the dK/dV of the previous step travel back meanwhile
                moving = moving + _link_time(args, work.rows[:, step - 1], grad_bytes, step - 1)
            steps[:, step] = np.maximum(compute[:, step], moving)
        if name == "bwd" and cp > 1:
            steps[:, cp] = _link_time(args, work.rows[:, cp - 1], grad_bytes, cp - 1)
        busiest = np.append(compute.max(axis=0), 0.0)
        result[name] = steps.max(axis=0).sum()  # lockstep: every step waits for its busiest rank
        result[f"{name}_own_pace"] = steps.sum(axis=1).max()  # each rank at its own pace
        result[f"{name}_exposed"] = int((steps.max(axis=0) > busiest * (1 + 1e-9)).sum())
        result[f"{name}_ideal"] = compute.sum() / cp
    return result


def _cells(t: dict) -> str:
    both, ideal = t["fwd"] + t["bwd"], t["fwd_ideal"] + t["bwd_ideal"]
    own_pace = t["fwd_own_pace"] + t["bwd_own_pace"]
    exposed = f"{t['fwd_exposed']}/{t['bwd_exposed']}"
    return f"{1e3 * t['fwd']:7.2f} {1e3 * both:8.2f} {exposed:>7} {ideal / both:5.0%} {ideal / own_pace:5.0%}"


def parse_args() -> argparse.Namespace:
    """Command line: shapes, rates and the head configuration."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seqs", type=int, nargs="+", default=[131072, 262144, 524288, 1048576])
    parser.add_argument("--cps", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--mixes", nargs="+", default=["1K+S/2", "1K"], choices=list(DOCUMENT_MIXES))
    parser.add_argument("--mode", default="anchor", choices=["anchor", "intra_doc", "causal"])
    parser.add_argument("--heads", type=int, default=32, help="query heads of the model (Llama-3-8B: 32)")
    parser.add_argument("--heads-kv", type=int, default=8, help="K/V heads of the model (Llama-3-8B: 8)")
    parser.add_argument("--dim", type=int, default=128, help="head dimension")
    parser.add_argument("--tp", type=int, default=2, help="tensor-parallel size: divides the heads")
    parser.add_argument("--fwd-tflops", type=float, default=400.0, help="forward kernel rate (H100 bf16)")
    parser.add_argument("--bwd-tflops", type=float, default=300.0, help="backward kernel rate")
    parser.add_argument("--nvlink-gbps", type=float, default=450.0, help="GB/s per GPU per direction")
    parser.add_argument("--ib-gbps", type=float, default=50.0, help="GB/s per GPU per direction")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--grad-bytes", type=int, default=4, help="bytes per dK/dV element (fp32 sums)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    print(
        f"{args.mode} mode, {args.heads} heads / {args.heads_kv} K/V heads, d={args.dim}, TP={args.tp}; "
        f"{args.fwd_tflops:.0f}/{args.bwd_tflops:.0f} TFLOP/s fwd/bwd (4hd/10hd FLOPs per pair); "
        f"NVLink {args.nvlink_gbps:.0f} GB/s, IB {args.ib_gbps:.0f} GB/s per GPU per direction, "
        f"{args.gpus_per_node} GPUs a node ({args.gpus_per_node // args.tp} CP ranks a node)"
    )
    print(
        "per layout: fwd ms and fwd+bwd ms per layer, exposed transfer steps fwd/bwd (of cp), efficiency "
        "in lockstep and with every rank at its own pace"
    )
    header = f"{'fwd':>7} {'fwd+bwd':>8} {'exposed':>7} {'eff':>5} {'own':>5}"
    print(f"\n{'':>22} | {'megatron':^36} | {'balanced':^36} |")
    print(f"{'S':>7} {'mix':>7} {'cp':>4} | {header} | {header} | {'speed-up':>8}")
    for mix in args.mixes:
        for seq_len in args.seqs:
            doc_row = DOCUMENT_MIXES[mix][1](seq_len, args.seed)[0]
            for cp in args.cps:
                megatron = layer_time(args, ring_work(doc_row, megatron_cp_index(seq_len, cp), args.mode))
                balanced = layer_time(
                    args, ring_work(doc_row, balanced_cp_index(doc_row, cp, args.mode), args.mode)
                )
                speedup = (megatron["fwd"] + megatron["bwd"]) / (balanced["fwd"] + balanced["bwd"])
                print(
                    f"{seq_len:>7} {mix:>7} {cp:>4} | {_cells(megatron)} | {_cells(balanced)} | "
                    f"{speedup:7.2f}x",
                    flush=True,
                )


if __name__ == "__main__":
    main()
