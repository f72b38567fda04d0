"""The GPU routes as their released sources define them (``*.json``, written by ``extract.py``), through this
project's binders: every route x version runs exact against fp64 or is refused with a reason, in one call
and in the ring over two gloo ranks; the README table is generated from the same data."""

from __future__ import annotations

import copy
import json
import math
import tempfile
from pathlib import Path

import pytest
import routes
import standins
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from megatron_anchor.attention import anchor_cp_attention, dense_reference_attention
from megatron_anchor.attention.flash_packages import PADDED_LSE_BEFORE, FlashAttnPackage, _version_tuple
from megatron_anchor.attention.merge import merge_rows
from megatron_anchor.binding import BindError
from megatron_anchor.parallel import batch_cp_index, free_port, shard_for_cp, unshard_from_cp

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("route", routes.ROUTES, ids=lambda r: f"{r.family}-{r.point}")
def test_every_recorded_route_runs_exact_against_fp64(route):
    assert routes.outcome(route).startswith("runs"), routes.outcome(route)


def test_readme_table_is_generated_from_the_contracts():
    readme = (REPO / "README.md").read_text()
    assert routes.with_routes_table(readme) == readme, "run: python tests/contracts/routes.py README.md"


def test_every_contract_names_its_source():
    for family in ("aten_flash", "flash_attn", "flash_attn3", "te_rope"):
        for point, contract in standins.contracts(family).items():
            source = contract["source"]
            assert contract["version"] and source["files"], (family, point)
            assert source.get("from") or len(source.get("commit", "")) == 40, (family, point)


def test_fa3_head_backward_gets_is_causal_and_a_renamed_flag_is_refused():
    """FA3 since the torch.compile change: backward ``is_causal: bool = False``, forward ``causal``."""
    head = routes.Route("flash_attn3", "head")
    backend, reason = routes.load(head)
    assert backend is not None, reason
    call = routes.call_of(routes.LENGTHS, causal=True)
    values = backend._values(None, None, None, call, 0.3)
    values.update(dict.fromkeys(("dout", "out", "softmax_lse", "dq", "dk", "dv", "rng_state")))
    kwargs = backend._bwd.kwargs(**values)
    assert kwargs["is_causal"] is True and "causal" not in kwargs
    assert routes.kernel_error(backend, causal=True) <= routes.TOLERANCE
    record = copy.deepcopy(standins.contracts("flash_attn3")["head"]["backward"])
    del record["custom_op"]  # a plain function: the binder reads the same signature either way
    for p in record["parameters"]:  # a further rename: the causal flag under a name nobody binds
        if p["name"] == "is_causal":
            p["name"] = "causal_mask"
    renamed = standins.python_standin(record, lambda args: None, "flash_attn_interface", "standin_renamed")
    forward = standins.package_functions("flash_attn3", "head")["_flash_attn_forward"]
    with pytest.raises(
        BindError, match="_flash_attn_backward: no causal flag parameter.*'causal_mask' not set"
    ):
        FlashAttnPackage("flash_attn3", forward, renamed)


@pytest.mark.parametrize("version", sorted(standins.contracts("flash_attn")))
def test_flash_attn_lse_layout_is_known_before_any_call(version):
    """flash-attn 2.4-2.5 return the varlen lse padded ``[b, h, max_seqlen_q]``: the loader says so from the
    version alone (nothing is called), in agreement with the recorded C++ allocation."""
    backend, reason = routes.load(routes.Route("flash_attn", version))
    recorded = standins.contracts("flash_attn")[version]["varlen_lse"]["layout"]
    assert backend is not None and backend.lse_layout == recorded, reason
    assert (_version_tuple(version) < PADDED_LSE_BEFORE) == (recorded == "padded")


def test_rows_without_keys_leave_the_backend_at_minus_inf_and_merge_without_nan():
    """FlashAttention-2 (recorded: ``+INFINITY`` in softmax.h) gives a row that sees no key lse = +inf."""
    route = routes.Route("flash_attn", "2.6.3")
    assert route.contract["empty_row_lse"]["value"] == "+inf"
    backend, _ = routes.load(route)
    q, k = torch.randn(5, 2, 8), torch.randn(3, 1, 8)
    call = routes.call_of([(5, 3)], causal=True)  # bottom-right aligned: rows 0 and 1 see no key
    raw = backend._forward(**backend._fwd.kwargs(**backend._values(q, k, k, call, 0.5)))
    raw_lse = raw[route.contract["forward"]["returns"].index("softmax_lse")]
    assert torch.isposinf(raw_lse[:, :2]).all()  # the stand-in reproduces the recorded kernel
    out, lse, _ = backend.forward(q, k, k, call, 0.5)
    assert torch.isneginf(lse[:, :2]).all() and lse[:, 2:].isfinite().all()
    merged_out, merged_lse = torch.randn(5, 2, 8), torch.randn(2, 5)
    merge_rows(merged_out, merged_lse, slice(0, 5), out, lse)
    assert not merged_out.isnan().any() and not merged_lse.isnan().any()


def _ring_error(backend, rank: int, world: int, inputs: tuple, doc_ids, cp_index, wants: tuple) -> float:
    """The worst relative error of out, dq, dk, dv of the ring over ``backend``, gathered."""
    q, k, v, dout = inputs
    local = [shard_for_cp(t, cp_index, rank, seq_dim=0).requires_grad_() for t in (q, k, v)]
    out = anchor_cp_attention(*local, doc_ids, cp_group=dist.group.WORLD, cp_index=cp_index, backend=backend)
    out.backward(shard_for_cp(dout, cp_index, rank, seq_dim=0))
    got = []
    for t in (out.detach(), *(x.grad for x in local)):
        shards = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(shards, t.contiguous())
        got.append(unshard_from_cp(shards, cp_index, seq_dim=0))
    return max(routes._rel(g, w) for g, w in zip(got, wants))


def _ring_worker(rank: int, world: int, port: int, path: str) -> None:
    torch.set_num_threads(1)
    # The stand-ins are made before the process group: making a custom op imports torch._dynamo, which
    # holds on to every process group that exists then, so destroy_process_group would leave the group to
    # the interpreter's exit, where its gloo thread may still be releasing a gather (std::terminate).
    backends = {f"{r.family}-{r.point}": routes.load(r)[0] for r in routes.KERNEL_ROUTES}
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    gen = torch.Generator().manual_seed(0)
    doc_ids = torch.tensor([[0] + [1] * 9 + [2] * 30 + [3] * 4 + [4] * 20])  # [1, 64]
    cp_index = batch_cp_index(doc_ids, world, "balanced", "anchor")
    q, dout = (torch.randn(64, 1, 4, 16, generator=gen) for _ in range(2))
    k, v = (torch.randn(64, 1, 2, 16, generator=gen) for _ in range(2))
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref = dense_reference_attention(*ref_in, doc_ids, "anchor")
    ref.backward(dout.double())
    wants = (ref.detach(), *(x.grad for x in ref_in))
    inputs = (q, k, v, dout)
    errors = {
        name: _ring_error(backend, rank, world, inputs, doc_ids, cp_index, wants)
        for name, backend in backends.items()
    }
    if rank == 0:
        Path(path).write_text(json.dumps(errors))
    dist.destroy_process_group()


def test_every_kernel_route_drives_the_ring_on_two_ranks():
    """Anchor mode, balanced layout, GQA: forward and dq/dk/dv of each route's stand-in against fp64."""
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/errors.json"
        mp.spawn(_ring_worker, args=(2, free_port(), path), nprocs=2, join=True)
        errors = json.loads(Path(path).read_text())
    assert set(errors) == {f"{r.family}-{r.point}" for r in routes.KERNEL_ROUTES}
    assert all(e <= 1e-5 for e in errors.values()) and not any(math.isnan(e) for e in errors.values()), errors
