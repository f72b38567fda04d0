"""The FlashAttention packages' private varlen functions behind the contract of ``backends.py``.

- ``flash_attn2``: ``flash_attn.flash_attn_interface._flash_attn_varlen_forward/_backward`` (flash-attn
  2.4-2.8; from 2.7 ``torch.library`` custom ops, whose wrapped function holds the signature).
- ``flash_attn3``: FlashAttention-3's ``flash_attn_interface``: ``_flash_attn_forward/_backward`` taking
  ``cu_seqlens_q`` (2025 on), ``_flash_attn_varlen_forward/_backward`` in the 2024 betas.

The public autograd functions keep their own out/lse, and the ring's backward needs the merged ones: the
private functions are called, bound by name (``megatron_anchor.binding``). What changed across the versions
(recorded from the released sources in ``tests/contracts/``): FA3's backward names its causal flag
``is_causal`` since the torch.compile change (merged 2025-12-04) while its forward keeps ``causal``;
windows are ``window_size=(l, r)`` or ``window_size_left/right``; flash-attn 2.4-2.5 return the varlen
log-sum-exp padded, ``[n_seq, h, max_seqlen_q]``, and take it so in backward (2.6+: ``[h, total_q]``):
converted here both ways.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch

from megatron_anchor.attention.flash import REQUIRED_MEANINGS, rows_without_keys_at_minus_inf
from megatron_anchor.attention.plan import KernelCall
from megatron_anchor.binding import BindError, Binding, python_parameters, qualified_name

# The neutral setting of every optional feature the packages' varlen functions have had (no dropout, window,
# softcap, ALiBi, paging, appended K/V, rotary, fp8 descaling, split-KV; default scheduling).
_NO_WINDOW = {"window_size": (-1, -1), "window_size_left": -1, "window_size_right": -1}
_FORWARD_FIXED = {
    **_NO_WINDOW, "dropout_p": 0.0, "softcap": 0.0, "alibi_slopes": None, "return_softmax": False,
    "zero_tensors": False, "block_table": None, "leftpad_k": None, "seqused_q": None, "seqused_k": None,
    "k_new": None, "v_new": None, "qv": None, "out": None, "out_": None, "cu_seqlens_k_new": None,
    "page_table": None, "kv_batch_idx": None, "rotary_cos": None, "rotary_sin": None, "seqlens_rotary": None,
    "rotary_interleaved": True, "q_descale": None, "k_descale": None, "v_descale": None, "descale_q": None,
    "descale_k": None, "descale_v": None, "attention_chunk": 0, "scheduler_metadata": None, "num_splits": 1,
    "pack_gqa": None, "gqa_parallel": False, "sm_margin": 0,
}  # fmt: skip
_BACKWARD_FIXED = {
    **_NO_WINDOW, "dropout_p": 0.0, "softcap": 0.0, "alibi_slopes": None, "deterministic": False,
    "zero_tensors": False, "seqused_q": None, "seqused_k": None, "sequed_q": None, "sequed_k": None,
    "sm_margin": 0,
}  # fmt: skip
_FORWARD_CALL = (
    "q", "k", "v", "cu_seqlens_q", "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "softmax_scale", "causal",
    "is_causal",
)  # fmt: skip
_BACKWARD_CALL = (*_FORWARD_CALL, "dout", "out", "softmax_lse", "dq", "dk", "dv", "rng_state")


@dataclass(frozen=True)
class PackageSpec:
    """Where a package's varlen functions live."""

    module: str
    forwards: tuple[str, ...]  # candidate names, first taking ``cu_seqlens_q`` wins
    backwards: tuple[str, ...]


PACKAGES = {
    "flash_attn2": PackageSpec(
        "flash_attn.flash_attn_interface", ("_flash_attn_varlen_forward",), ("_flash_attn_varlen_backward",)
    ),
    "flash_attn3": PackageSpec(
        "flash_attn_interface",
        ("_flash_attn_forward", "_flash_attn_varlen_forward"),
        ("_flash_attn_backward", "_flash_attn_varlen_backward"),
    ),
}
# flashattn-hopper 3.0.0.b1 (FlashAttention-3's 2024 wheel, hopper/ at 284e2c6e, 2024-11-12): setup.py
# compiles forward kernels for head dims 64, 128 and 256 only (static_switch.h's HEADDIM_SWITCH runs any
# other as 256) and flash_api.cpp's mha_varlen_bwd checks head_size <= 128: both directions run 64 and 128.
TRAINING_HEAD_DIMS = {"flashattn-hopper": (64, 128)}
PADDED_LSE_BEFORE = (2, 6)  # flash-attn versions below return [n_seq, h, max_seqlen_q] varlen log-sum-exps


def _padded_rows(call: KernelCall, total_q: int) -> torch.Tensor:
    """``[Tq]`` index of each packed query row in the ``n_seq * max_q`` padded rows (device ops, no reads)."""
    if "padded_lse_rows" not in call.cache:
        cu = call.cu_q.long()
        rows = torch.arange(total_q, device=cu.device)
        seq = torch.searchsorted(cu[1:], rows, right=True)  # [Tq] sequence of each row
        call.cache["padded_lse_rows"] = seq * call.max_q + rows - cu[seq]
    return call.cache["padded_lse_rows"]


def packed_lse(padded: torch.Tensor, call: KernelCall, total_q: int) -> torch.Tensor:
    """``[n_seq, h, max_q]`` -> ``[h, Tq]``."""
    heads = padded.shape[1]
    flat = padded.transpose(0, 1).reshape(heads, -1)  # [h, n_seq * max_q]
    return flat.index_select(1, _padded_rows(call, total_q))


def padded_lse(lse: torch.Tensor, call: KernelCall) -> torch.Tensor:
    """``[h, Tq]`` -> ``[n_seq, h, max_q]`` (rows past a sequence's end: 0, the kernel does not read them)."""
    heads, total_q = lse.shape
    flat = lse.new_zeros(heads, call.sequences * call.max_q)
    flat.index_copy_(1, _padded_rows(call, total_q), lse)
    return flat.view(heads, call.sequences, call.max_q).transpose(0, 1).contiguous()


class FlashAttnPackage:
    """A package's private varlen forward/backward, every parameter bound (``BindError`` if one cannot be)."""

    def __init__(
        self, name: str, forward: Callable, backward: Callable, lse_layout: str = "packed", version: str = ""
    ) -> None:
        self.name, self.lse_layout, self.version = name, lse_layout, version
        self._forward, self._backward = forward, backward
        self._fwd = self._binding(forward, _FORWARD_FIXED, _FORWARD_CALL)
        self._bwd = self._binding(backward, _BACKWARD_FIXED, _BACKWARD_CALL)

    def head_dim_reason(self, head_dim: int | None) -> str:
        """Why this build cannot take heads of ``head_dim`` channels forward and backward ('' when it can)."""
        dims = TRAINING_HEAD_DIMS.get(self.version.split(" ")[0])
        if head_dim is None or dims is None or head_dim in dims:
            return ""
        built = ", ".join(map(str, dims))
        return f"{self.version} compiles head dims {built} (forward and backward), not {head_dim}"

    @staticmethod
    def _binding(fn: Callable, fixed: dict, per_call: tuple[str, ...]) -> Binding:
        return Binding(qualified_name(fn), python_parameters(fn), fixed, per_call, REQUIRED_MEANINGS)

    @staticmethod
    def _values(q, k, v, call: KernelCall, scale: float) -> dict:
        return {
            "q": q, "k": k, "v": v, "cu_seqlens_q": call.cu_q, "cu_seqlens_k": call.cu_k,
            "max_seqlen_q": call.max_q, "max_seqlen_k": call.max_k, "softmax_scale": scale,
            "causal": call.causal, "is_causal": call.causal,
        }  # fmt: skip

    def _lse(self, result: tuple, q: torch.Tensor, call: KernelCall) -> torch.Tensor:
        """The forward's fp32 log-sum-exp as ``[h, Tq]`` (its place in the returned tuple varies)."""
        total_q, heads = q.shape[0], q.shape[1]
        shape = (heads, total_q) if self.lse_layout == "packed" else (call.sequences, heads, call.max_q)
        for t in result[1:]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == shape:
                return t if self.lse_layout == "packed" else packed_lse(t, call, total_q)
        raise RuntimeError(f"{self.name}: the forward returned no fp32 {list(shape)} log-sum-exp")

    def forward(self, q, k, v, call: KernelCall, scale: float):
        """``(out, lse [h, Tq] fp32, the rng state for the backward or None)``."""
        result = self._forward(**self._fwd.kwargs(**self._values(q, k, v, call, scale)))
        last = result[-1]
        rng = last if isinstance(last, torch.Tensor) and last.dtype == torch.int64 else None
        return result[0], rows_without_keys_at_minus_inf(self._lse(result, q, call)), rng

    def backward(self, dout, q, k, v, out, lse, call: KernelCall, scale: float, aux):
        """``(dq, dk, dv)`` like q, k, v (written by the kernel into preallocated buffers)."""
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        lse = lse.contiguous() if self.lse_layout == "packed" else padded_lse(lse, call)
        values = self._values(q, k, v, call, scale)
        values.update(dout=dout.contiguous(), out=out, softmax_lse=lse, dq=dq, dk=dk, dv=dv, rng_state=aux)
        self._backward(**self._bwd.kwargs(**values))
        return dq, dk, dv


def _varlen_function(module, names: tuple[str, ...]) -> Callable:
    """The first of ``names`` in ``module`` that takes ``cu_seqlens_q``."""
    for name in names:
        fn = getattr(module, name, None)
        if fn is not None and any(p.name == "cu_seqlens_q" for p in python_parameters(fn)):
            return fn
    raise ImportError(f"{module.__name__} has no varlen function among {names}")


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def _version_and_layout(name: str) -> tuple[str, str]:
    """The installed version and the varlen log-sum-exp layout it returns."""
    if name == "flash_attn2":
        version = str(importlib.import_module("flash_attn").__version__)
        return f"flash-attn {version}", "padded" if _version_tuple(version) < PADDED_LSE_BEFORE else "packed"
    for dist in ("flash_attn_3", "flashattn-hopper"):  # FlashAttention-3's wheel names: 2025 on, 2024
        try:
            return f"{dist} {importlib.metadata.version(dist)}", "packed"
        except importlib.metadata.PackageNotFoundError:
            continue
    return "flash_attn_interface", "packed"


def load_package(name: str) -> tuple[FlashAttnPackage | None, str]:
    """Package backend ``name`` when it imports and binds, else None and the reason (nothing is called)."""
    spec = PACKAGES[name]
    try:
        module = importlib.import_module(spec.module)
        version, layout = _version_and_layout(name)
        forward = _varlen_function(module, spec.forwards)
        backward = _varlen_function(module, spec.backwards)
        return FlashAttnPackage(name, forward, backward, layout, version), ""
    except BindError as err:
        return None, f"{spec.module} refused: {err}"
    except Exception as err:  # a broken CUDA extension raises more than ImportError
        return None, f"{spec.module} unusable: {type(err).__name__}: {err}"


def package_installed(name: str) -> bool:
    """Whether package backend ``name``'s top-level module is there (found, not imported)."""
    top = PACKAGES[name].module.split(".")[0]
    return top in sys.modules or _findable(top)


@functools.cache
def _findable(module: str) -> bool:
    """Whether ``module`` is on sys.path: searched once per process (auto asks at every attention call)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.cache
def installed_package(name: str) -> tuple[FlashAttnPackage | None, str]:
    """``load_package`` once per process."""
    return load_package(name)
