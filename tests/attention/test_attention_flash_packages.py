"""How the GPU kernels are bound and chosen, without a GPU: the binder's refusals, the head-dim fallback,
packages that do not import. The routes as their releases define them are driven in ``tests/contracts/``."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from megatron_anchor.attention.backends import TorchTiled, select_backend
from megatron_anchor.attention.flash import gpu_backend_status
from megatron_anchor.attention.flash_packages import FlashAttnPackage, load_package
from megatron_anchor.binding import BindError

CUDA = torch.device("cuda")  # only compared, never touched


def backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dq, dk,
             dv, softmax_scale, causal, window_size_left=-1, window_size_right=-1):  # fmt: skip
    raise AssertionError("never called")


def _forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal):
    raise AssertionError("never called")


def test_a_parameter_nobody_sets_refuses_the_function_though_it_has_a_default():
    """A future flag with a default could change the math: the package is refused, naming it."""

    def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal,
                sink_tokens=0, learnable_sink=None):  # fmt: skip
        raise AssertionError("never called")

    with pytest.raises(BindError, match=r"forward: parameters 'sink_tokens', 'learnable_sink' not set by"):
        FlashAttnPackage("flash_attn3", forward, backward)


def test_a_function_without_a_causal_flag_or_scale_is_refused_with_both_reasons():
    def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, mask_kind="causal"):
        raise AssertionError("never called")

    message = r"no causal flag parameter \(none of causal, is_causal\); no softmax scale .*'mask_kind'"
    with pytest.raises(BindError, match=message):
        FlashAttnPackage("flash_attn3", forward, backward)


def test_a_function_hiding_its_parameters_is_refused():
    def forward(*args, **kwargs):
        raise AssertionError("never called")

    with pytest.raises(BindError, match=r"takes \*args: its parameters cannot be checked"):
        FlashAttnPackage("flash_attn3", forward, backward)


@pytest.mark.parametrize("head_dim", [100, 264])
def test_head_dims_the_kernels_do_not_take_fall_back_with_the_reason(capsys, head_dim):
    reason = f"head dim {head_dim}: the flash kernels take a multiple of 8 up to 256"
    for name in ("flash", "flash_attn2", "flash_attn3"):
        assert gpu_backend_status(name, CUDA, torch.bfloat16, head_dim) == (False, reason)
        with pytest.raises(RuntimeError, match=f"attention backend '{name}' cannot run: {reason}"):
            select_backend(name, CUDA, torch.bfloat16, head_dim)
    assert isinstance(select_backend("auto", CUDA, torch.bfloat16, head_dim), TorchTiled)
    assert f"note: attention kernel: 'torch' (tiled fp32 matmuls), no flash kernel runs: {reason}" in (
        capsys.readouterr().out
    )


def test_missing_packages_are_reported_not_raised():
    backend, reason = load_package("flash_attn2")
    assert backend is None and "flash_attn.flash_attn_interface unusable: ModuleNotFoundError" in reason


def _fake_fa3(monkeypatch, backward) -> None:
    """An importable ``flash_attn_interface`` with ``backward`` on a Hopper GPU (nothing is called)."""
    from megatron_anchor.attention import flash_packages

    module = types.ModuleType("flash_attn_interface")
    module._flash_attn_forward, module._flash_attn_backward = _forward, backward
    monkeypatch.setitem(sys.modules, "flash_attn_interface", module)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    flash_packages.installed_package.cache_clear()


def test_auto_says_once_why_an_installed_fa3_is_refused(monkeypatch, capsys):
    """An FA3 whose backward gained a parameter nobody sets is refused: auto takes torch's flash and says why
    in one line naming the package and the parameter; a package simply not installed stays silent."""
    from megatron_anchor.attention import backends, flash_packages

    def new_backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                     dq, dk, dv, softmax_scale, is_causal, new_flag=0):  # fmt: skip
        raise AssertionError("never called")

    monkeypatch.setattr(backends, "_NOTED", set())
    try:
        _fake_fa3(monkeypatch, new_backward)
        for _ in range(2):
            assert backends.select_backend("auto", CUDA, torch.bfloat16, 128).name == "flash"
    finally:
        flash_packages.installed_package.cache_clear()
    notes = [line for line in capsys.readouterr().out.splitlines() if "flash_attn3" in line]
    assert len(notes) == 1 and "installed flash_attn3 is not used: flash_attn_interface refused" in notes[0]
    assert "'new_flag'" in notes[0] and notes[0].endswith("(auto takes 'flash')")
    monkeypatch.delitem(sys.modules, "flash_attn_interface")
    assert backends.select_backend("auto", CUDA, torch.bfloat16, 128).name == "flash"
    assert capsys.readouterr().out == ""  # FA3 not installed here: nothing to say


def test_capabilities_and_head_dims_a_build_lacks_fall_back_with_the_reason(monkeypatch, capsys):
    """torch's flash op and flash-attn 2 need sm80+; the 2024 FlashAttention-3 wheel compiles head dims 64 and
    128 for both directions: auto falls back with the reason instead of failing in the kernel."""
    from megatron_anchor.attention import backends, flash_packages

    monkeypatch.setattr(backends, "_NOTED", set())
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    reason = "the FlashAttention-2 kernels need sm80 or newer, this GPU is sm75"
    for name in ("flash", "flash_attn2"):
        assert gpu_backend_status(name, CUDA, torch.bfloat16, 128) == (False, reason)
    assert isinstance(select_backend("auto", CUDA, torch.bfloat16, 128), TorchTiled)
    assert f"no flash kernel runs: {reason}" in capsys.readouterr().out

    beta = FlashAttnPackage("flash_attn3", _forward, backward, version="flashattn-hopper 3.0.0.b1")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(flash_packages, "installed_package", lambda name: (beta, ""))
    assert gpu_backend_status("flash_attn3", CUDA, torch.bfloat16, 128) == (True, "")
    why = "flashattn-hopper 3.0.0.b1 compiles head dims 64, 128 (forward and backward), not 256"
    assert gpu_backend_status("flash_attn3", CUDA, torch.bfloat16, 256) == (False, why)
    later = FlashAttnPackage("flash_attn3", _forward, backward, version="flash_attn_3 3.0.0")
    assert later.head_dim_reason(256) == ""


def test_auto_searches_for_a_missing_fa3_once_per_process(monkeypatch):
    """``select_backend`` runs at every attention call of every layer: whether FlashAttention-3 is installed
    is looked up on sys.path once, not at each call."""
    import importlib.util

    from megatron_anchor.attention import backends

    searched, find_spec = [], importlib.util.find_spec
    counted = lambda name, *rest: searched.append(name) or find_spec(name, *rest)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", counted)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(backends, "_NOTED", set())
    for _ in range(3):
        backends.select_backend("auto", CUDA, torch.bfloat16, 128)
    assert searched.count("flash_attn_interface") <= 1
