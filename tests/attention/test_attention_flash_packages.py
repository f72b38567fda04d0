"""The flash-attn (FA2) and flash_attn_interface (FA3) paths through stand-ins of their documented signatures.

The packages need CUDA to build, so stand-in modules with the same private varlen functions (names,
parameters, outputs: FA2 2.7's ``(out, softmax_lse, S_dmask, rng_state)``, FA3's ``(out, softmax_lse, ...)``,
backward writing into ``dq/dk/dv``) compute with the reference kernel; the project's code binds to them
exactly as it binds to the real ones.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace
from typing import Optional

import pytest
import torch
from test_attention_kernels import LENGTHS, _call, _inputs, _reference

from megatron_anchor.attention import flash
from megatron_anchor.attention.backends import VarlenReference


def _ref_call(cu_q, cu_k, causal):
    return SimpleNamespace(cu_q=cu_q, cu_k=cu_k, causal=causal)


def fa2_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p, softmax_scale,
                causal, window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
                return_softmax=False, block_table=None, leftpad_k=None, seqused_k=None, zero_tensors=False):
    assert dropout_p == 0.0 and (window_size_left, window_size_right) == (-1, -1)
    assert cu_seqlens_q.dtype == torch.int32
    call = _ref_call(cu_seqlens_q, cu_seqlens_k, causal)
    out, lse, _ = VarlenReference().forward(q, k, v, call, softmax_scale)
    return out, lse, None, torch.zeros(2, dtype=torch.int64)


def fa2_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                 max_seqlen_k, dropout_p, softmax_scale, causal, window_size_left, window_size_right, softcap,
                 alibi_slopes, deterministic, rng_state=None, zero_tensors=False):
    assert rng_state is not None and rng_state.dtype == torch.int64
    grads = VarlenReference().backward(
        dout, q, k, v, out, softmax_lse, _ref_call(cu_seqlens_q, cu_seqlens_k, causal), softmax_scale
    )
    for buffer, grad in zip((dq, dk, dv), grads):
        buffer.copy_(grad)
    return torch.zeros(q.shape[1], q.shape[0])


def fa3_forward(q, k, v, k_new, v_new, qv, out, cu_seqlens_q, cu_seqlens_k, cu_seqlens_k_new, seqused_q,
                seqused_k, max_seqlen_q, max_seqlen_k, page_table, kv_batch_idx, leftpad_k, rotary_cos,
                rotary_sin, seqlens_rotary, q_descale, k_descale, v_descale, softmax_scale, causal,
                window_size=(-1, -1), attention_chunk=0, softcap=0.0, rotary_interleaved=True,
                scheduler_metadata=None, num_splits=1, pack_gqa=None, sm_margin=0):
    assert k_new is None and out is None and window_size == (-1, -1)
    call = _ref_call(cu_seqlens_q, cu_seqlens_k, causal)
    out, lse, _ = VarlenReference().forward(q, k, v, call, softmax_scale)
    return out, lse, None, None


def fa3_backward(dout, q, k, v, out, softmax_lse, cu_seqlens_q, cu_seqlens_k, sequed_q, sequed_k,
                 max_seqlen_q, max_seqlen_k, dq, dk, dv, softmax_scale, causal, window_size=(-1, -1),
                 softcap=0.0, deterministic=False, sm_margin=0):
    grads = VarlenReference().backward(
        dout, q, k, v, out, softmax_lse, _ref_call(cu_seqlens_q, cu_seqlens_k, causal), softmax_scale
    )
    for buffer, grad in zip((dq, dk, dv), grads):
        buffer.copy_(grad)
    return torch.zeros(q.shape[1], q.shape[0])


# flash-attn 2.7 on torch >= 2.4 registers its varlen functions as torch.library custom ops, whose Python
# signature is (*args, **kwargs): the binder must read the wrapped function's parameters.
@torch.library.custom_op("megatron_anchor_test::fa2_forward", mutates_args=(), device_types="cpu")
def fa2_custom_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int, max_seqlen_k: int, dropout_p: float, softmax_scale: float, causal: bool,
    window_size_left: int = -1, window_size_right: int = -1, softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None, return_softmax: bool = False,
    block_table: Optional[torch.Tensor] = None, leftpad_k: Optional[torch.Tensor] = None,
    seqused_k: Optional[torch.Tensor] = None, zero_tensors: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out, lse, _, rng = fa2_forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p,
                                   softmax_scale, causal)
    return out, lse, torch.empty(0), rng


@torch.library.custom_op(
    "megatron_anchor_test::fa2_backward", mutates_args=("dq", "dk", "dv"), device_types="cpu"
)
def fa2_custom_backward(
    dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
    softmax_lse: torch.Tensor, dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor,
    cu_seqlens_q: torch.Tensor, cu_seqlens_k: torch.Tensor, max_seqlen_q: int, max_seqlen_k: int,
    dropout_p: float, softmax_scale: float, causal: bool, window_size_left: int = -1,
    window_size_right: int = -1, softcap: float = 0.0, alibi_slopes: Optional[torch.Tensor] = None,
    deterministic: bool = False, rng_state: Optional[torch.Tensor] = None, zero_tensors: bool = False,
) -> torch.Tensor:
    return fa2_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                        max_seqlen_k, dropout_p, softmax_scale, causal, window_size_left, window_size_right,
                        softcap, alibi_slopes, deterministic, rng_state)


def _install(monkeypatch, module_name: str, **functions) -> None:
    module = types.ModuleType(module_name)
    for name, fn in functions.items():
        if callable(fn) and not hasattr(fn, "_init_fn"):
            fn.__name__ = name
        setattr(module, name, fn)
    monkeypatch.setitem(sys.modules, module_name, module)
    if "." in module_name:
        parent = types.ModuleType(module_name.split(".")[0])
        setattr(parent, module_name.split(".")[1], module)
        monkeypatch.setitem(sys.modules, module_name.split(".")[0], parent)
    flash._package.cache_clear()


STANDINS = {
    "flash_attn2": ("flash_attn.flash_attn_interface", {"_flash_attn_varlen_forward": fa2_forward,
                                                        "_flash_attn_varlen_backward": fa2_backward}),
    "flash_attn2 (custom ops)": ("flash_attn.flash_attn_interface",
                                 {"_flash_attn_varlen_forward": fa2_custom_forward,
                                  "_flash_attn_varlen_backward": fa2_custom_backward}),
    "flash_attn3": ("flash_attn_interface", {"_flash_attn_forward": fa3_forward,
                                            "_flash_attn_backward": fa3_backward}),
}  # fmt: skip


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("name", sorted(STANDINS))
def test_package_backend_binds_and_matches_fp64(monkeypatch, name, causal):
    module_name, functions = STANDINS[name]
    _install(monkeypatch, module_name, **functions)
    backend, reason = flash._package(name.split(" ")[0])
    assert backend is not None, reason
    q, k, v = _inputs(LENGTHS, seed=2)
    call = _call(LENGTHS, causal)
    out, lse, aux = backend.forward(q, k, v, call, 0.25)
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = _reference(*ref_in, LENGTHS, causal, 0.25)
    assert (out.double() - ref_out).abs().max() < 1e-5 and (lse.double() - ref_lse).abs().max() < 1e-5
    dout = torch.randn_like(q)
    ref_out.backward(dout.double())
    for got, x in zip(backend.backward(dout, q, k, v, out, lse, call, 0.25, aux), ref_in):
        assert (got.double() - x.grad).abs().max() / x.grad.abs().max() < 1e-5
    flash._package.cache_clear()


def test_a_signature_with_an_unknown_required_argument_is_unavailable(monkeypatch):
    def forward(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal, new):
        raise AssertionError("never called")

    functions = {"_flash_attn_forward": forward, "_flash_attn_backward": fa3_backward}
    _install(monkeypatch, "flash_attn_interface", **functions)
    backend, reason = flash._package("flash_attn3")
    assert backend is None and "needs 'new'" in reason
    flash._package.cache_clear()


def test_missing_packages_are_reported_not_raised():
    flash._package.cache_clear()
    backend, reason = flash._package("flash_attn2")
    assert backend is None and "flash_attn.flash_attn_interface unusable" in reason
