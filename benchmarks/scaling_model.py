"""A transformer layer's time on paper under each CP communication type: GEMMs, attention, exposed traffic.

    python benchmarks/scaling_model.py                  # Llama-3-8B, S = 128K .. 1M, 8 .. 128 GPUs
    python benchmarks/scaling_model.py --quick          # S = 128K and 256K, 1K-token documents
    python benchmarks/scaling_model.py --gemm-tflops 500 --ib-gbps 25 --gpus 32 64

One layer, forward and backward, on the GPUs of one sample (TP x CP; data parallelism repeats it). Work
and traffic come from the layouts' geometry (``SampleGeometry``) as the attention runs it; every rate is a
flag. GPUs are numbered TP innermost, then CP: CP rank ``c`` holds GPUs ``c*TP .. c*TP + TP-1``, a node
``--gpus-per-node`` GPUs.
- GEMMs (QKV, proj, SwiGLU MLP): ``2 * weights`` FLOPs per token forward, twice that backward, split over
  TP, at ``--gemm-tflops``. With TP > 1, sequence parallelism moves ``[S/cp, hidden]`` bf16 tensors over
  NVLink: 4 all-gathers/reduce-scatters forward, 6 backward (the column-parallel inputs are gathered
  again), exposed.
- Attention: ``4*h*d`` FLOPs per visible pair forward, ``10*h*d`` backward, at the kernel's TFLOP/s.
- ``p2p``: the anchor ring over the CP ranks in the balanced layout (megatron-core's in one column of the
  per-type table): step k's compute hides step k+1's
  transfer; a step lasts max(compute, transfer) on the busiest rank (lockstep); backward moves K/V again
  and the fp32 dK/dV back; the last dK/dV transfer is exposed. A hop is NVLink inside a node, else IB.
- ``a2a`` (Ulysses): q, k, v and out (forward; their gradients backward) once each, ``(A-1)/A`` of each
  leaving the GPU, over NVLink to peers in the node and IB to the others, exposed; K/V heads repeated when
  A does not divide them. Then every rank attends the whole sample for ``h/A`` heads: no imbalance.
- ``a2a+p2p`` (A x P): the all-to-all inside groups of A consecutive CP ranks, then the ring over the P
  groups (balanced over P) with ``h/A`` heads per rank: its hops are ``A * TP`` GPUs apart.
The layer's ideal is its GEMMs plus the sample's attention work / cp, both at their rates, with no traffic;
``eff`` is the ideal over the modeled time. MFU counts the model's FLOPs (GEMMs x 3, attention ``12*h*d``
per visible pair) over the modeled time at ``--peak-tflops``. Memory is not modeled: a TP or CP size that
does not fit is the reader's to rule out (README: Memory and communication).
"""

from __future__ import annotations

import argparse
import functools
from dataclasses import dataclass

import numpy as np
from doc_mixes import DOCUMENT_MIXES  # benchmarks/doc_mixes.py, beside this file

from megatron_anchor.attention.geometry import SampleGeometry
from megatron_anchor.parallel import balanced_cp_index, megatron_cp_index, visible_pairs
from megatron_anchor.parallel.comm_types import kv_head_repeat

BF16 = 2


@dataclass(frozen=True)
class RingWork:
    """Per ring rank, per step: visible pairs computed and K/V rows received (one sample, one layer)."""

    pairs: np.ndarray  # [P, P] pairs[r, k]: rank r's visible pairs at step k (step 0: its own rows)
    rows: np.ndarray  # [P, P] rows[r, k]: K/V rows rank r receives at step k (from rank r - k)


@functools.cache
def ring_work(mix: str, seq_len: int, ring: int, mode: str, seed: int, layout: str = "balanced") -> RingWork:
    """Pairs and received rows of every (rank, step) of the ring over ``ring`` ranks in ``layout``."""
    doc_row = DOCUMENT_MIXES[mix][1](seq_len, seed)[0]
    if layout == "balanced":
        index = balanced_cp_index(doc_row, ring, mode)
    else:
        index = megatron_cp_index(seq_len, ring)
    geometry = SampleGeometry(doc_row.numpy(), index.numpy(), mode)
    pairs, rows = np.zeros((ring, ring)), np.zeros((ring, ring))
    for rank in range(ring):
        local = np.diff(geometry.local_docs(rank))  # rows of each document the rank holds
        pairs[rank, 0] = (local * (local + 1) // 2).sum()
        for step in range(1, ring):
            received = geometry.received(rank, (rank - step) % ring)
            pairs[rank, step] = (received.q_len * received.key_len).sum()
            rows[rank, step] = received.rows
    # Every visible pair once (the anchor, folded in closed form, aside): the mask's closed form.
    expected = visible_pairs(doc_row[None], "causal" if mode == "causal" else "intra_doc")
    assert pairs.sum() == expected, f"ring pairs {pairs.sum():.0f} != visible pairs {expected}"
    return RingWork(pairs, rows)


@dataclass(frozen=True)
class Config:
    """One way to run a sample: TP, CP and the CP communication type with its degrees A x P."""

    tp: int
    a2a: int  # A: all-to-all degree (1: p2p)
    ring: int  # P: ranks of the ring (1: a2a)

    @property
    def cp(self) -> int:
        """CP size A * P."""
        return self.a2a * self.ring

    @property
    def name(self) -> str:
        """``p2p``, ``a2a`` or ``a2a+p2p AxP``."""
        if self.a2a == 1:
            return "p2p"
        return "a2a" if self.ring == 1 else f"a2a+p2p {self.a2a}x{self.ring}"


def _rate(args, a: np.ndarray, b: np.ndarray, gap: int) -> np.ndarray:
    """Bytes/s between ring ranks ``a`` and ``b`` whose GPUs are ``rank * gap``: NVLink in a node, else IB."""
    same_node = a * gap // args.gpus_per_node == b * gap // args.gpus_per_node
    return np.where(same_node, args.nvlink_gbps, args.ib_gbps) * 1e9


def ring_seconds(args, cfg: Config, work: RingWork) -> dict:
    """Forward and backward seconds of the ring (with ``h / (tp*A)`` heads per rank), and its ideal."""
    ring = cfg.ring
    heads = args.heads / (cfg.tp * cfg.a2a)
    heads_kv = args.heads_kv / cfg.tp * kv_head_repeat(args.heads // cfg.tp, args.heads_kv // cfg.tp, cfg.a2a)
    kv_bytes = heads_kv / cfg.a2a * args.dim * BF16 * 2  # one row of K and V
    grad_bytes = heads_kv / cfg.a2a * args.dim * args.grad_bytes * 2
    ranks, gap = np.arange(ring), cfg.a2a * cfg.tp  # ring neighbours are A * TP GPUs apart

    def hop(rows: np.ndarray, row_bytes: float, step: int) -> np.ndarray:
        """[P] seconds of step ``step``'s messages (receive from r - step, send to r + step)."""
        src, dst = (ranks - step) % ring, (ranks + step) % ring
        inbound = rows * row_bytes / _rate(args, src, ranks, gap)
        outbound = rows[dst] * row_bytes / _rate(args, ranks, dst, gap)
        return np.maximum(inbound, outbound)

    result = {}
    for name, flops, rate in (("fwd", 4, args.fwd_tflops), ("bwd", 10, args.bwd_tflops)):
        compute = work.pairs * flops * heads * args.dim / (rate * 1e12)  # [P, P] seconds
        steps = np.zeros((ring, ring + 1))  # [rank, step]; the extra step: the last dK/dV
        for step in range(ring):
            moving = hop(work.rows[:, step + 1], kv_bytes, step + 1) if step + 1 < ring else 0.0
            if name == "bwd" and step > 1:  # the dK/dV of the previous step travel back meanwhile
                moving = moving + hop(work.rows[:, step - 1], grad_bytes, step - 1)
            steps[:, step] = np.maximum(compute[:, step], moving)
        if name == "bwd" and ring > 1:
            steps[:, ring] = hop(work.rows[:, ring - 1], grad_bytes, ring - 1)
        result[name] = steps.max(axis=0).sum()  # lockstep: every step waits for its busiest rank
        result[f"{name}_ideal"] = compute.sum() / ring
    return result


def a2a_seconds(args, cfg: Config, tokens: int) -> float:
    """Seconds of one layer's all-to-alls, forward and backward (q, k, v, out; then their gradients)."""
    if cfg.a2a == 1:
        return 0.0
    heads, heads_kv = args.heads // cfg.tp, args.heads_kv // cfg.tp
    heads_kv *= kv_head_repeat(heads, heads_kv, cfg.a2a)
    per_peer = tokens * (2 * heads + 2 * heads_kv) * args.dim * BF16 / cfg.a2a  # bytes to each peer
    in_node = max(1, min(cfg.a2a, args.gpus_per_node // cfg.tp))  # group ranks in this GPU's node
    nvlink = (in_node - 1) * per_peer / (args.nvlink_gbps * 1e9)
    ib = (cfg.a2a - in_node) * per_peer / (args.ib_gbps * 1e9)
    return 2 * max(nvlink, ib)  # forward, and the same bytes backward


@dataclass(frozen=True)
class Layer:
    """One layer's modeled seconds (forward + backward) and the parts of it."""

    seconds: float
    ideal: float
    gemm: float
    attention: float  # the ring (or whole-sample) attention with its exposed ring traffic
    a2a: float
    tp_comm: float
    model_flops: float  # per GPU

    def eff(self) -> float:
        """The ideal over the modeled time."""
        return self.ideal / self.seconds

    def mfu(self, peak_tflops: float) -> float:
        """Model FLOPs per second over the peak."""
        return self.model_flops / self.seconds / (peak_tflops * 1e12)


def layer(args, cfg: Config, mix: str, seq_len: int, layout: str = "balanced") -> Layer:
    """One layer of the model on the sample's GPUs under ``cfg`` (the ring's groups in ``layout``)."""
    tokens = seq_len // cfg.cp  # per CP rank (and per GPU of its TP group)
    hidden, kv_width = args.hidden, args.heads_kv * args.dim
    weights = hidden * (hidden + 2 * kv_width) + hidden * hidden + 3 * hidden * args.ffn
    gemm_flops = 3 * 2 * weights * tokens / cfg.tp  # forward + backward (2x), per GPU
    gemm = gemm_flops / (args.gemm_tflops * 1e12)
    tp_bytes = 10 * tokens * hidden * BF16 * (cfg.tp - 1) / cfg.tp
    tp_comm = tp_bytes / (args.nvlink_gbps * 1e9)
    work = ring_work(mix, seq_len, cfg.ring, args.mode, args.seed, layout)
    ring = ring_seconds(args, cfg, work)
    attention, attention_ideal = ring["fwd"] + ring["bwd"], ring["fwd_ideal"] + ring["bwd_ideal"]
    a2a = a2a_seconds(args, cfg, tokens)
    # attention_ideal is per ring rank over h / A heads: the same as the sample's work / cp for all heads.
    pairs = work.pairs.sum()
    model_flops = gemm_flops + 12 * pairs * args.heads * args.dim / (cfg.tp * cfg.cp)
    return Layer(
        seconds=gemm + tp_comm + a2a + attention,
        ideal=gemm + attention_ideal,
        gemm=gemm,
        attention=attention,
        a2a=a2a,
        tp_comm=tp_comm,
        model_flops=model_flops,
    )


def configs(args, gpus: int) -> list[Config]:
    """Every (TP, A, P) with TP x A x P = ``gpus`` that can run: TP within a node and dividing the K/V
    heads, A dividing the query heads of a TP rank."""
    found = []
    for tp in (1, 2, 4, 8):
        if gpus % tp or tp > args.gpus_per_node or (args.heads_kv % tp):
            continue
        cp = gpus // tp
        for a2a in (d for d in range(1, cp + 1) if cp % d == 0):
            if (args.heads // tp) % a2a == 0:
                found.append(Config(tp, a2a, cp // a2a))
    return found


def parse_args() -> argparse.Namespace:
    """Command line: the model, the shapes, the rates."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seqs", type=int, nargs="+", default=[131072, 262144, 1048576])
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 16, 32, 64, 128], help="TP x CP a sample")
    parser.add_argument("--mixes", nargs="+", default=["1K", "1K+S/2"], choices=list(DOCUMENT_MIXES))
    parser.add_argument("--mode", default="anchor", choices=["anchor", "intra_doc", "causal"])
    parser.add_argument("--hidden", type=int, default=4096, help="model width (Llama-3-8B: 4096)")
    parser.add_argument("--ffn", type=int, default=14336, help="SwiGLU width (Llama-3-8B: 14336)")
    parser.add_argument("--heads", type=int, default=32, help="query heads (Llama-3-8B: 32)")
    parser.add_argument("--heads-kv", type=int, default=8, help="K/V heads (Llama-3-8B: 8)")
    parser.add_argument("--dim", type=int, default=128, help="head dimension")
    parser.add_argument("--row-tp", type=int, default=2, help="TP of the per-type table")
    parser.add_argument("--gemm-tflops", type=float, default=650.0, help="GEMM rate (H100 bf16)")
    parser.add_argument("--fwd-tflops", type=float, default=400.0, help="attention forward kernel rate")
    parser.add_argument("--bwd-tflops", type=float, default=300.0, help="attention backward kernel rate")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="MFU's peak (H100 SXM bf16 dense)")
    parser.add_argument("--nvlink-gbps", type=float, default=450.0, help="GB/s per GPU per direction")
    parser.add_argument("--ib-gbps", type=float, default=50.0, help="GB/s per GPU per direction")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--grad-bytes", type=int, default=4, help="bytes per dK/dV element (fp32 sums)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="S = 128K and 256K, 1K documents")
    args = parser.parse_args()
    if args.quick:
        args.seqs, args.mixes, args.gpus = [131072, 262144], ["1K"], [16, 64, 128]
    return args


def _cell(args, result: Layer) -> str:
    return f"{1e3 * result.seconds:7.2f} {result.eff():4.0%} {result.mfu(args.peak_tflops):4.0%}"


def per_type_table(args) -> None:
    """At TP = ``--row-tp``: each type's layer time, efficiency and MFU (a2a+p2p: its best A x P)."""
    print(f"\nper type at TP = {args.row_tp}: layer fwd+bwd ms, eff (of the layer's ideal), MFU")
    header = f"{'ms':>7} {'eff':>4} {'MFU':>4}"
    print(
        f"{'S':>7} {'mix':>7} {'cp':>3} {'tok/CP':>7} | {'p2p megatron':^17} | {'p2p':^17} | "
        f"{'a2a':^17} | {'best a2a+p2p':^29}"
    )
    print(f"{'':>28} | {header} | {header} | {header} | {'A x P':>11} {header}")
    for mix in args.mixes:
        for seq_len in args.seqs:
            for gpus in args.gpus:
                cp = gpus // args.row_tp
                found = {c.name: c for c in configs(args, gpus) if c.tp == args.row_tp}
                cells = [_cell(args, layer(args, found["p2p"], mix, seq_len, "megatron"))] + [
                    _cell(args, layer(args, found[name], mix, seq_len)) if name in found else "-"
                    for name in ("p2p", "a2a")
                ]
                hier = [layer(args, c, mix, seq_len) for c in found.values() if c.a2a > 1 and c.ring > 1]
                names = [c.name.split()[1] for c in found.values() if c.a2a > 1 and c.ring > 1]
                best = min(range(len(hier)), key=lambda i: hier[i].seconds, default=None)
                hier_cell = "-" if best is None else f"{names[best]:>11} {_cell(args, hier[best])}"
                print(
                    f"{seq_len:>7} {mix:>7} {cp:>3} {seq_len // cp:>7} | {cells[0]:>17} | {cells[1]:>17} | "
                    f"{cells[2]:>17} | {hier_cell:>29}",
                    flush=True,
                )


def best_table(args) -> None:
    """For each S and GPU count: the best configuration, against the best ring-only one."""
    print("\nbest per S and GPUs (TP x CP per sample): layer fwd+bwd ms, eff, MFU; the time's parts in ms")
    print(
        f"{'S':>7} {'mix':>7} {'GPUs':>4} | {'best (TP, type)':>22} {'tok/CP':>6} "
        f"{'ms':>7} {'eff':>4} {'MFU':>4} "
        f"{'gemm':>6} {'tp':>5} {'a2a':>5} {'attn':>6} | {'best p2p':>8} {'ms':>7} {'eff':>4} {'MFU':>4} "
        f"{'tok/CP':>6}"
    )
    for mix in args.mixes:
        for seq_len in args.seqs:
            for gpus in args.gpus:
                rows = [(c, layer(args, c, mix, seq_len)) for c in configs(args, gpus)]
                cfg, best = min(rows, key=lambda row: row[1].seconds)
                ring_cfg, ring_best = min(
                    ((c, r) for c, r in rows if c.a2a == 1), key=lambda row: row[1].seconds
                )
                parts = " ".join(f"{1e3 * x:{w}.2f}" for x, w in zip(
                    (best.gemm, best.tp_comm, best.a2a, best.attention), (6, 5, 5, 6)
                ))  # fmt: skip
                print(
                    f"{seq_len:>7} {mix:>7} {gpus:>4} | {f'TP {cfg.tp} {cfg.name}':>22} "
                    f"{seq_len // cfg.cp:>6} {_cell(args, best)} "
                    f"{parts} | {f'TP {ring_cfg.tp}':>8} {_cell(args, ring_best)} "
                    f"{seq_len // ring_cfg.cp:>6}",
                    flush=True,
                )


def main() -> None:
    args = parse_args()
    print(
        f"{args.mode} mode; model hidden {args.hidden}, SwiGLU {args.ffn}, {args.heads} heads / "
        f"{args.heads_kv} K/V, d={args.dim}; GEMMs {args.gemm_tflops:.0f} TFLOP/s, attention "
        f"{args.fwd_tflops:.0f}/{args.bwd_tflops:.0f} fwd/bwd, MFU peak {args.peak_tflops:.0f}; NVLink "
        f"{args.nvlink_gbps:.0f} GB/s, IB {args.ib_gbps:.0f} GB/s per GPU per direction, "
        f"{args.gpus_per_node} GPUs a node; mixes: "
        + "; ".join(f"{m} = {DOCUMENT_MIXES[m][0]}" for m in args.mixes)
    )
    per_type_table(args)
    best_table(args)


if __name__ == "__main__":
    main()
