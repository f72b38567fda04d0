"""Context-parallel layouts side by side, by index arithmetic alone (no attention runs): seconds to a minute.

    python benchmarks/cp_balance.py            # S = 64K, 256K, 1M; cp = 2 .. 32; four document mixes
    python benchmarks/cp_balance.py --quick    # S = 64K only

Layouts: megatron-core's (2*cp chunks, rank r holds chunks r and 2cp-1-r), torch 2.13's per-document
head-tail (``_PerDocumentHeadTailLoadBalancer``: every document padded to a multiple of 2*cp and cut into
2*cp pieces, rank j holding pieces j and 2cp-1-j; its padding tokens are attention work like the others,
placed at the end of their document), and ``balanced_cp_index``. Columns, per layout:
- ``busy``: the busiest rank's attention work (visible (query, key) pairs of its queries, padding
  included) over the ideal, the real sample's work / cp. The ring waits for the busiest rank.
- ``pad``: padding tokens added to the sample.
- ``kv max`` / ``kv mean``: K/V rows a rank receives over the whole ring (``SampleGeometry.received_rows``),
  max and mean over ranks; the sample has S rows.
- ``calls``: kernel calls of one ring step, max over ranks and steps (1 at step 0, the levels after).
``ms``: balanced_cp_index's CPU time (best of 3, one thread, as in a data-loader worker; CPU rather than
wall time, which other processes on a shared machine inflate: the last line gives both at cp = 64).
"""

from __future__ import annotations

import argparse
import time

import torch
from doc_mixes import DOCUMENT_MIXES  # benchmarks/doc_mixes.py, beside this file

from megatron_anchor.attention.geometry import SampleGeometry
from megatron_anchor.parallel import balanced_cp_index, rank_work, visible_pairs
from megatron_anchor.parallel.cp_layout import megatron_cp_index


def per_document_head_tail(doc_row: torch.Tensor, cp_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's per-document head-tail layout: (padded doc_row ``[S']``, cp_index ``[cp, S'/cp]``)."""
    ids, lengths = torch.unique_consecutive(doc_row, return_counts=True)
    padded = (lengths + 2 * cp_size - 1) // (2 * cp_size) * (2 * cp_size)
    padded_row = torch.repeat_interleave(ids, padded)  # padding joins the end of its document
    offset = torch.arange(len(padded_row)) - torch.repeat_interleave(padded.cumsum(0) - padded, padded)
    piece = offset // torch.repeat_interleave(padded // (2 * cp_size), padded)  # 0 .. 2cp-1
    owner = torch.where(piece < cp_size, piece, 2 * cp_size - 1 - piece)
    index = torch.argsort(owner, stable=True).reshape(cp_size, -1)  # [cp, S'/cp], ascending per rank
    return padded_row, index


def evaluate(doc_row: torch.Tensor, index: torch.Tensor, mode: str, ideal: float) -> dict:
    """Busiest rank's work over ``ideal``, K/V rows received (max, mean) and calls per ring step."""
    work = rank_work(doc_row, index, mode)  # [cp]
    geometry = SampleGeometry(doc_row.numpy(), index.numpy(), mode)
    rows = geometry.received_rows()
    return {
        "busy": work.max().item() / ideal,
        "kv_max": rows.max(),
        "kv_mean": rows.mean(),
        "calls": max(1, int(geometry.full_calls().max())),
    }


def _timed_layout(doc_row: torch.Tensor, cp_size: int, mode: str, repeat: int = 3) -> tuple[float, float]:
    """Best wall and CPU milliseconds of ``repeat`` calls of ``balanced_cp_index``."""
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        balanced_cp_index(doc_row, cp_size, mode)
        wall.append(1e3 * (time.perf_counter() - start))
        cpu.append(1e3 * (time.process_time() - start_cpu))
    return min(wall), min(cpu)


def compare(doc_row: torch.Tensor, cp_size: int, mode: str) -> dict:
    """The three layouts of one sample at one CP size."""
    seq_len = len(doc_row)
    ideal = visible_pairs(doc_row[None], mode) / cp_size
    _, cpu_ms = _timed_layout(doc_row, cp_size, mode)
    balanced = balanced_cp_index(doc_row, cp_size, mode)
    padded_row, torch_index = per_document_head_tail(doc_row, cp_size)
    return {
        "megatron": {**evaluate(doc_row, megatron_cp_index(seq_len, cp_size), mode, ideal), "pad": 0},
        "torch": {**evaluate(padded_row, torch_index, mode, ideal), "pad": len(padded_row) - seq_len},
        "balanced": {**evaluate(doc_row, balanced, mode, ideal), "pad": 0},
        "ms": cpu_ms,
    }


def _cells(result: dict) -> str:
    return (
        f"{result['busy']:5.2f}x {result['pad']:>6} {result['kv_max']:>8.0f} {result['kv_mean']:>8.0f} "
        f"{result['calls']:>5}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seqs", type=int, nargs="+", default=[65536, 262144, 1048576])
    parser.add_argument("--cps", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    parser.add_argument("--mixes", nargs="+", default=list(DOCUMENT_MIXES), choices=list(DOCUMENT_MIXES))
    parser.add_argument("--mode", default="anchor", choices=["anchor", "intra_doc", "causal"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="S = 64K only")
    args = parser.parse_args()
    if args.quick:
        args.seqs = [65536]
    torch.set_num_threads(1)
    print(f"{args.mode} mode; mixes: " + "; ".join(f"{k} = {DOCUMENT_MIXES[k][0]}" for k in args.mixes))
    layout_header = f"{'busy':>6} {'pad':>6} {'kv max':>8} {'kv mean':>8} {'calls':>5}"
    print(f"\n{'':>19} | {'megatron':^37} | {'torch per-document head-tail':^37} | {'balanced':^37} |")
    print(f"{'S':>7} {'mix':>6} {'cp':>3} | {layout_header} | {layout_header} | {layout_header} | {'ms':>5}")
    start, worst = time.perf_counter(), 0.0
    for seq_len in args.seqs:
        for mix in args.mixes:
            doc_row = DOCUMENT_MIXES[mix][1](seq_len, args.seed)[0]
            for cp_size in args.cps:
                row = compare(doc_row, cp_size, args.mode)
                worst = max(worst, row["balanced"]["busy"])
                cells = " | ".join(_cells(row[layout]) for layout in ("megatron", "torch", "balanced"))
                print(f"{seq_len:>7} {mix:>6} {cp_size:>3} | {cells} | {row['ms']:5.0f}", flush=True)
    elapsed = time.perf_counter() - start
    longest = max(args.seqs)
    timings = "  ".join(
        "{}: {:.0f} / {:.0f} ms".format(
            mix, *_timed_layout(DOCUMENT_MIXES[mix][1](longest, args.seed)[0], 64, args.mode)
        )
        for mix in args.mixes
    )
    print(f"\nbalanced_cp_index at S = {longest}, cp = 64, wall / CPU (best of 3): {timings}")
    print(f"\nbalanced: busiest rank <= {worst:.3f}x the ideal on every row; total {elapsed:.0f} s")


if __name__ == "__main__":
    main()
