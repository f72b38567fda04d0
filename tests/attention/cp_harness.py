"""Multi-process harness: one gloo group per CP size runs every case, rank 0 checks against fp64 dense."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_anchor.attention import (
    AttentionStats,
    anchor_cp_attention,
    build_attention_plan,
    dense_reference_attention,
)
from megatron_anchor.parallel import free_port
from megatron_anchor.parallel.comm_types import CP_COMM_TYPES, comm_type_groups, hierarchical_groups
from megatron_anchor.parallel.cp_layout import (
    batch_cp_index,
    megatron_cp_index,
    shard_for_cp,
    unshard_from_cp,
)
from tests.dispatch_recorders import RecordOps, host_read


def layout(name: str, seq_len: int, seed: int) -> torch.Tensor:
    """doc_ids ``[S]`` of a named layout: anchor (document 0) then documents 1, 2, ..."""
    gen = torch.Generator().manual_seed(seed)
    rest = seq_len - 1
    if name == "one_doc":
        lengths = [rest]
    elif name == "tiny":  # 1-3 token documents
        lengths = torch.randint(1, 4, (rest,), generator=gen).tolist()
    elif name == "edges":  # documents end exactly on every 1/16 of the sample (chunk edges up to cp=8)
        lengths = [seq_len // 16 - 1] + [seq_len // 16] * 15
    elif name == "off_edges":  # boundaries one token off the 1/8 edges, plus some random ones
        lengths = [seq_len // 8 + 1, seq_len // 8 - 2] + torch.randint(
            2, seq_len // 4, (rest,), generator=gen
        ).tolist()
    elif name == "sparse":  # short documents: most of the sample is invisible to most queries
        lengths = torch.randint(6, 20, (rest,), generator=gen).tolist()
    elif name == "lognormal":  # realistic mix: log-normal lengths around S/16 and one long document
        lengths = [seq_len // 2] + (torch.randn(rest, generator=gen) * 0.6).exp().mul(
            seq_len / 16
        ).long().add(1).tolist()
    else:
        raise ValueError(name)
    ids = torch.repeat_interleave(torch.arange(1, len(lengths) + 1), torch.tensor(lengths))[:rest]
    return torch.cat([torch.zeros(1, dtype=torch.long), ids])


def make_cp_index(
    name: str, doc_ids: torch.Tensor, cp: int, seed: int, mode: str, a2a_size: int = 1
) -> torch.Tensor | None:
    """``[b, cp, S / cp]`` layout of each sample: None for megatron-core's (the default path), the
    balanced layout of ``mode`` (over the ring's ``cp / a2a_size`` groups), or a random permutation of
    the sample cut into equal parts."""
    if name == "megatron":
        return None
    if name == "balanced":
        return batch_cp_index(doc_ids, cp, "balanced", mode, a2a_size)
    batch, seq_len = doc_ids.shape
    gen = torch.Generator().manual_seed(1000 + seed)
    if name == "random":
        return torch.stack([torch.randperm(seq_len, generator=gen).view(cp, -1) for _ in range(batch)])
    raise ValueError(name)


def layout_index(cp_index: torch.Tensor | None, batch: int, seq_len: int, cp: int) -> torch.Tensor:
    """The explicit ``[b, cp, S / cp]`` index of a case (megatron-core's when None)."""
    if cp_index is not None:
        return cp_index
    return megatron_cp_index(seq_len, cp, batch)


@dataclass
class Case:
    """One comparison against the dense reference."""

    name: str
    mode: str
    layouts: tuple[str, ...]
    seq_len: int = 64
    heads: int = 4
    heads_kv: int = 2
    dim: int = 16
    dtype: str = "float32"
    backend: str = "auto"
    cp_layout: str = "megatron"
    seed: int = 0
    comm: str = "p2p"  # --cp-comm-type; a2a+p2p runs as 2 x (cp / 2)


def cases_for(cp: int) -> list[Case]:
    """The cases a CP size runs (all divisible by 2*cp)."""
    cases = []
    for mode in ("causal", "intra_doc", "anchor"):
        cases += [
            Case(f"{mode}-gqa-onedoc-tiny", mode, ("one_doc", "tiny")),
            Case(f"{mode}-gqa-edges-off-torch", mode, ("edges", "off_edges"), backend="torch", seed=1),
            Case(f"{mode}-bf16-off", mode, ("off_edges",), heads_kv=4, dtype="bfloat16", seed=2),
            Case(f"{mode}-bf16-tiny-torch", mode, ("tiny",), dtype="bfloat16", backend="torch", seed=3),
        ]
        if cp <= 4:  # the GPU kernels' driver through their contract, every mode, fp32 and bf16
            for dtype in ("float32", "bfloat16"):
                cases.append(
                    Case(f"{mode}-varlen-{dtype}", mode, ("lognormal", "tiny"), dtype=dtype,
                         backend="varlen_reference", seed=6)
                )  # fmt: skip
        if cp in (2, 4):  # the balanced layout of the documents
            cases += [
                Case(f"{mode}-balanced-gqa", mode, ("lognormal", "sparse"), cp_layout="balanced", seed=9),
                Case(f"{mode}-balanced-bf16", mode, ("tiny", "off_edges"), dtype="bfloat16",
                     cp_layout="balanced", seed=10),
                Case(f"{mode}-balanced-varlen", mode, ("lognormal", "one_doc"), backend="varlen_reference",
                     cp_layout="balanced", seed=11),
            ]  # fmt: skip
        if cp > 1:  # any layout: random permutations of the sample cut into equal parts
            cases += [
                Case(f"{mode}-random-gqa", mode, ("lognormal", "sparse"), cp_layout="random", seed=7),
                Case(f"{mode}-random-bf16-ref", mode, ("off_edges", "one_doc"), dtype="bfloat16",
                     backend="varlen_reference", cp_layout="random", seed=8),
            ]  # fmt: skip
        if cp == 1:
            cases.append(Case(f"{mode}-anchor-plus-one", mode, ("one_doc",), seq_len=2, seed=4))
        if cp == 2:
            cases += [
                Case(
                    f"{mode}-long-{backend}",
                    mode,
                    ("lognormal", "sparse"),
                    seq_len=1216,
                    heads=2,
                    heads_kv=1,
                    dim=8,
                    backend=backend,
                    seed=5,
                )
                for backend in ("torch", "sdpa_cpu")
            ]
    return cases + comm_type_cases(cp)


def comm_type_cases(cp: int) -> list[Case]:
    """The all-to-all types at ``cp`` (a2a at 2 and 4; a2a+p2p as 2 x 2 at 4): every mode, megatron and
    balanced layouts, GQA with K/V heads the degree divides and with heads it must repeat, fp32 and bf16."""
    comms = {2: ["a2a"], 4: ["a2a", "a2a+p2p"]}.get(cp, [])
    cases = []
    for comm in comms:
        degree = cp if comm == "a2a" else 2
        for mode in ("causal", "intra_doc", "anchor"):
            name = f"{mode}-{comm}"
            cases += [
                Case(f"{name}-gqa-megatron", mode, ("lognormal", "tiny"), heads=8, heads_kv=degree,
                     comm=comm, seed=20),
                Case(f"{name}-kv-repeat-balanced", mode, ("lognormal", "sparse"), heads=2 * degree,
                     heads_kv=degree // 2, cp_layout="balanced", comm=comm, seed=21),
                Case(f"{name}-kv-repeat-bf16-megatron", mode, ("off_edges", "one_doc"), heads=degree,
                     heads_kv=1, dtype="bfloat16", comm=comm, seed=22),
                Case(f"{name}-bf16-balanced-varlen", mode, ("tiny", "lognormal"), heads=degree,
                     heads_kv=degree, dtype="bfloat16", backend="varlen_reference", cp_layout="balanced",
                     comm=comm, seed=23),
            ]  # fmt: skip
    return cases


def comm_groups(world: int) -> dict[str, tuple]:
    """``{comm type: (ring group, all-to-all group)}`` on ``world`` ranks (a2a+p2p on 4: consecutive pairs
    [[0, 1], [2, 3]] for the all-to-all, the ring across them)."""
    hierarchical = None
    if world == 4:
        hierarchical = hierarchical_groups(dist.get_rank(), list(range(world)), 2, dist.new_group)
    return {
        comm: comm_type_groups(comm, dist.group.WORLD, hierarchical)
        for comm in CP_COMM_TYPES
        if comm != "a2a+p2p" or hierarchical
    }


def a2a_size(case: Case, world: int) -> int:
    """The all-to-all degree of a case's comm type."""
    return {"p2p": 1, "a2a": world, "a2a+p2p": 2}[case.comm]


def _rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def _gather(t: torch.Tensor, index: torch.Tensor, world: int) -> torch.Tensor:
    """Full-sample tensor ``[S, b, ...]`` from every rank's shard (fp32 on the wire)."""
    shards = [torch.empty_like(t, dtype=torch.float32) for _ in range(world)]
    dist.all_gather(shards, t.float().contiguous())
    return unshard_from_cp(shards, index, seq_dim=0)


def run_case(case: Case, rank: int, world: int, groups: dict) -> dict | None:
    """Run ``case`` on this rank; rank 0 returns relative errors of out, dq, dk, dv."""
    dtype = getattr(torch, case.dtype)
    doc_ids = torch.stack([layout(n, case.seq_len, case.seed + i) for i, n in enumerate(case.layouts)])
    gen = torch.Generator().manual_seed(case.seed)
    batch = len(case.layouts)
    q, gout = (
        torch.randn(case.seq_len, batch, case.heads, case.dim, generator=gen).to(dtype) for _ in range(2)
    )
    k, v = (
        torch.randn(case.seq_len, batch, case.heads_kv, case.dim, generator=gen).to(dtype) for _ in range(2)
    )
    cp_index = make_cp_index(case.cp_layout, doc_ids, world, case.seed, case.mode, a2a_size(case, world))
    index = layout_index(cp_index, batch, case.seq_len, world)
    local = [shard_for_cp(t, index, rank, seq_dim=0).detach().requires_grad_() for t in (q, k, v)]
    stats = AttentionStats()
    ring, a2a = groups[case.comm]
    out = anchor_cp_attention(
        *local, doc_ids, mode=case.mode, cp_group=ring, a2a_group=a2a, cp_index=cp_index,
        backend=case.backend, stats=stats,
    )  # fmt: skip
    out.backward(shard_for_cp(gout, index, rank, seq_dim=0))
    got = [_gather(t, index, world) for t in (out, *(x.grad for x in local))]
    kernel_calls = torch.tensor([stats.calls, stats.kernel_calls_forward, stats.kernel_calls_backward])
    if rank != 0:
        return None
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = dense_reference_attention(*ref_in, doc_ids, case.mode)
    ref.backward(gout.double())
    refs = [ref.detach(), *(x.grad for x in ref_in)]
    errors = {name: _rel_err(g, r) for name, g, r in zip(("out", "dq", "dk", "dv"), got, refs)}
    return {"errors": errors, "kernel_calls": kernel_calls.tolist()}


def run_stats(rank: int, world: int, mode: str, cp_layout: str) -> dict | None:
    """Counters summed over ranks on a sparse 2-sample layout; rank 0 returns them with doc_ids and index."""
    seq_len = 32 * 2 * world
    doc_ids = torch.stack([layout("sparse", seq_len, 7), layout("lognormal", seq_len, 8)])
    cp_index = make_cp_index(cp_layout, doc_ids, world, 3, mode)
    q = torch.randn(seq_len // world, 2, 2, 8)
    stats = AttentionStats()
    anchor_cp_attention(
        q, q[:, :, :1], q[:, :, :1], doc_ids, mode=mode, cp_group=dist.group.WORLD, cp_index=cp_index,
        stats=stats,
    )  # fmt: skip
    values = torch.tensor(list(asdict(stats).values()), dtype=torch.long)
    dist.all_reduce(values)
    if rank != 0:
        return None
    index = layout_index(cp_index, 2, seq_len, world)
    stats = dict(zip(asdict(stats), values.tolist()))
    return {"stats": stats, "doc_ids": doc_ids.tolist(), "index": index.tolist()}


def run_errors(rank: int, world: int) -> dict | None:
    """Errors that need a real group: S not divisible by 2*cp, doc_ids differing across ranks."""
    messages = {}
    q = torch.randn(3, 1, 2, 8)
    try:
        anchor_cp_attention(q, q, q, torch.zeros(1, 3 * world, dtype=torch.long), cp_group=dist.group.WORLD)
    except ValueError as err:
        messages["indivisible"] = str(err)
    doc_ids = torch.zeros(1, 4 * world, dtype=torch.long)
    doc_ids[0, 1 + rank :] = 1  # differs per rank
    os.environ["MEGATRON_ANCHOR_CHECK_DOC_IDS"] = "1"
    try:
        q = torch.randn(4, 1, 2, 8)
        anchor_cp_attention(q, q, q, doc_ids, cp_group=dist.group.WORLD)
    except ValueError as err:
        messages["differ"] = str(err)
    try:  # the model's path: the plan the layout builds once per micro-batch
        from megatron_anchor.model.layout import AnchorLayout

        layout = AnchorLayout(doc_ids=doc_ids, positions=torch.zeros(1, 4, dtype=torch.long))
        layout.attention_plan("anchor", dist.group.WORLD, torch.device("cpu"))
    except ValueError as err:
        messages["differ_layout"] = str(err)
    finally:
        del os.environ["MEGATRON_ANCHOR_CHECK_DOC_IDS"]
    return messages if rank == 0 else None


def run_comm_errors(rank: int, world: int, groups: dict) -> dict | None:
    """The one-line error of an all-to-all degree that cannot split the query heads."""
    q, kv = torch.randn(4, 1, 3, 8), torch.randn(4, 1, 1, 8)
    doc_ids = torch.zeros(1, 4 * world, dtype=torch.long)
    try:
        anchor_cp_attention(q, kv, kv, doc_ids, a2a_group=groups["a2a"][1])
    except ValueError as err:
        return {"heads": str(err)} if rank == 0 else None
    return {"heads": "no error"} if rank == 0 else None


def run_host_reads(rank: int, world: int, groups: dict) -> dict | None:
    """Ops reading back to the host in a forward and backward with the micro-batch's plan, per comm type."""
    seen = {}
    doc_ids = torch.stack([layout("lognormal", 16 * world, 3), layout("tiny", 16 * world, 4)])
    for comm, (ring, a2a) in groups.items():
        size = 1 if a2a is None else dist.get_world_size(a2a)
        ring_rank = 0 if ring is None else dist.get_rank(ring)
        cp_index = batch_cp_index(doc_ids, world, "balanced", "anchor", size)
        plan = build_attention_plan(
            doc_ids, "anchor", cp_size=world // size, rank=ring_rank, cp_index=cp_index, a2a_size=size
        )
        q = torch.randn(16, 2, 8, 8, requires_grad=True)
        kv = torch.randn(16, 2, 1, 8, requires_grad=True)
        with RecordOps(host_read) as recorder:
            anchor_cp_attention(q, kv, kv, plan=plan, cp_group=ring, a2a_group=a2a).sum().backward()
        everywhere = [None] * world
        dist.all_gather_object(everywhere, recorder.seen)
        seen[comm] = sorted({name for names in everywhere for name in names})
    return seen if rank == 0 else None


def run_reply_depth(rank: int, world: int) -> int | None:
    """Most dK/dV replies posted and not yet waited for at once in one backward (max over ranks)."""
    from megatron_anchor.attention.comm import CPComm, Pending

    depth = {"now": 0, "max": 0}
    post, wait = CPComm.reply, Pending.wait

    def counted_reply(self, *args, **kwargs):
        pending = post(self, *args, **kwargs)
        pending.is_reply = True
        depth["now"] += 1
        depth["max"] = max(depth["max"], depth["now"])
        return pending

    def counted_wait(self):
        depth["now"] -= getattr(self, "is_reply", False)
        return wait(self)

    CPComm.reply, Pending.wait = counted_reply, counted_wait
    try:
        doc_ids = layout("lognormal", 32 * world, 5)[None]
        cp_index = make_cp_index("random", doc_ids, world, 5, "anchor")  # every step exchanges rows
        q = torch.randn(32, 1, 2, 8, requires_grad=True)
        anchor_cp_attention(q, q, q, doc_ids, cp_group=dist.group.WORLD, cp_index=cp_index).sum().backward()
    finally:
        CPComm.reply, Pending.wait = post, wait
    most = torch.tensor([depth["max"]])
    dist.all_reduce(most, dist.ReduceOp.MAX)
    return int(most) if rank == 0 else None


def _worker(rank: int, world: int, port: int, path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {"cases": {}, "stats": {}}
    groups = comm_groups(world)
    for case in cases_for(world):
        results["cases"][case.name] = run_case(case, rank, world, groups)
    for mode in ("intra_doc", "anchor", "causal"):
        for cp_layout in ("megatron", "balanced", "random") if world > 1 else ("megatron",):
            results["stats"][f"{mode}-{cp_layout}"] = run_stats(rank, world, mode, cp_layout)
    if world > 1:
        results["errors"] = run_errors(rank, world)
        results["reply_depth"] = run_reply_depth(rank, world)
    if world in (2, 4):  # the all-to-all types' errors and host reads
        results["comm_errors"] = run_comm_errors(rank, world, groups)
        results["host_reads"] = run_host_reads(rank, world, groups)
    if rank == 0:
        with open(path, "w") as f:
            json.dump(results, f)
    dist.destroy_process_group()


def run_all(world: int, path: str) -> dict:
    """Spawn ``world`` gloo processes that run every case; return rank 0's results."""
    mp.spawn(_worker, args=(world, free_port(), path), nprocs=world, join=True)
    with open(path) as f:
        return json.load(f)
