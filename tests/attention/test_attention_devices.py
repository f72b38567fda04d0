"""Devices compared by what they mean: ``cuda`` is the current CUDA device, which tensors report as
``cuda:N``. Without a GPU the same mismatch is shown with ``meta:0`` (a plan's device) against ``meta``
(what meta tensors report), through the function that checks a plan against its inputs."""

from __future__ import annotations

import pytest
import torch

from megatron_anchor.attention import anchor_cp_attention, build_attention_plan
from megatron_anchor.devices import resolve_device, same_device

DOC_IDS = torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2]])


def test_a_device_without_an_index_is_the_current_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert same_device("cuda", torch.device("cuda:0")) and not same_device("cuda", "cuda:1")
    assert resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert same_device(torch.device("cuda"), "cuda:1") and not same_device("cuda", "cuda:0")
    assert same_device("cpu", "cpu:0") and not same_device("cpu", "meta") and not same_device("cuda:0", "cpu")


def test_devices_of_different_types_differ_without_asking_their_runtime(monkeypatch):
    """On a CPU-only torch ``torch.cuda.current_device()`` raises: ``cuda`` vs ``cpu`` must not call it."""

    def no_cuda():
        raise AssertionError("Torch not compiled with CUDA enabled")

    monkeypatch.setattr(torch.cuda, "current_device", no_cuda)
    assert not same_device("cuda", "cpu") and not same_device(torch.device("cpu"), "cuda")
    assert not same_device("cuda", "meta:0")


def test_a_plan_named_without_an_index_serves_the_tensors_of_that_device():
    plan = build_attention_plan(DOC_IDS, "anchor", device="meta:0")
    q = torch.empty(8, 1, 4, 16, device="meta", requires_grad=True)
    k, v = (torch.empty(8, 1, 2, 16, device="meta", requires_grad=True) for _ in range(2))
    anchor_cp_attention(q, k, v, plan=plan, backend="varlen_reference").sum().backward()
    assert q.grad.shape == q.shape
    wrong = (
        "plan built for ring rank 0/1 after an all-to-all of 1 on cpu, "
        "used on ring rank 0/1 after one of 1 on meta"
    )
    with pytest.raises(ValueError, match=wrong):
        anchor_cp_attention(q, k, v, plan=build_attention_plan(DOC_IDS), backend="varlen_reference")
