"""GPU variable-length flash kernels behind the contract of ``backends.py``, bound by parameter name.

- ``flash``: torch's own FlashAttention-2 (``aten._flash_attention_forward/_backward`` with ``cum_seq_q/k``).
  ``torch.nn.attention.varlen.varlen_attn`` calls exactly these ops; they are called directly because the
  backward must take the merged ``out``/``lse`` of the whole ring, not the call's own.
- ``flash_attn3`` / ``flash_attn2``: the FlashAttention-3 and ``flash_attn`` packages (``flash_packages.py``).

Every call is one kernel launch for all sequences of a ring step, GQA native (K/V keep ``h_kv`` heads). Each
parameter of the installed op or function gets a value this project chose (``megatron_anchor.binding``): a
version with a parameter it does not set, or without a spelling of the causal flag or the softmax scale, is
reported unusable with the reason before any call. Log-sum-exps leave every GPU backend as ``[h, Tq]`` fp32
with -inf on rows that see no key: FlashAttention-2 writes +inf there, which the log-sum-exp merge would turn
into NaN.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from megatron_anchor.attention.plan import KernelCall, kernel_call
from megatron_anchor.binding import BindError, Binding, schema_parameters

GPU_BACKENDS = ("flash", "flash_attn2", "flash_attn3")
# Meanings every flash kernel must let this project set, with their spellings across packages and versions.
REQUIRED_MEANINGS = {"causal flag": ("causal", "is_causal"), "softmax scale": ("softmax_scale", "scale")}
MAX_HEAD_DIM = 256
# FlashAttention-2 (flash-attn v2.4.2-v2.8.3 csrc/flash_attn/flash_api.cpp, vendored by aten's flash op):
# TORCH_CHECK(cc_major >= 8, "FlashAttention only supports Ampere GPUs or newer.")
FLASH2_MIN_CAPABILITY = 8

# aten ops: None is "off" for the optional features (no window, no ALiBi, no paging, torch's split heuristic).
_ATEN_FORWARD_FIXED = {
    "dropout_p": 0.0, "return_debug_mask": False, "window_size_left": None, "window_size_right": None,
    "seqused_k": None, "alibi_slopes": None, "block_table": None, "num_splits": None,
}  # fmt: skip
_ATEN_BACKWARD_FIXED = {"dropout_p": 0.0, "window_size_left": None, "window_size_right": None}
_ATEN_FORWARD_CALL = (
    "query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "is_causal", "scale",
)  # fmt: skip
_ATEN_BACKWARD_CALL = (*_ATEN_FORWARD_CALL, "grad_out", "out", "logsumexp", "rng_state", "unused")
_ATEN_RETURNS = ("output", "softmax_logsumexp", "rng_state", "unused")


def head_dim_reason(head_dim: int | None) -> str:
    """Why the flash kernels cannot take heads of ``head_dim`` channels ('' when they can).

    The aten op and flash-attn 2.7+ check ``% 8`` and ``<= 256`` in the kernel and do not pad (SDPA's wrapper
    and flash-attn's autograd functions pad; the private functions called here do not).
    """
    if head_dim is None or (head_dim % 8 == 0 and 0 < head_dim <= MAX_HEAD_DIM):
        return ""
    return f"head dim {head_dim}: the flash kernels take a multiple of 8 up to {MAX_HEAD_DIM}"


def rows_without_keys_at_minus_inf(lse: torch.Tensor) -> torch.Tensor:
    """``lse`` with +inf (FlashAttention-2's mark of a row that sees no key) replaced by -inf, in place."""
    return lse.masked_fill_(lse == float("inf"), float("-inf"))


class AtenFlash:
    """torch's FlashAttention-2 varlen kernels through the aten ops, bound by their schemas' names."""

    name = "flash"

    def __init__(self, ops=None) -> None:
        """``ops``: a namespace with the two ops (default ``torch.ops.aten``); ``BindError`` if unusable."""
        ops = torch.ops.aten if ops is None else ops
        self._forward = ops._flash_attention_forward.default
        self._backward = ops._flash_attention_backward.default
        returns = [r.name for r in self._forward._schema.returns]
        missing = [name for name in _ATEN_RETURNS if name not in returns]
        if missing:
            raise BindError(f"aten._flash_attention_forward returns {returns}, without {missing}")
        self._out, self._lse, *self._rng = (returns.index(name) for name in _ATEN_RETURNS)
        self._fwd = Binding(
            "aten._flash_attention_forward", schema_parameters(self._forward._schema),
            _ATEN_FORWARD_FIXED, _ATEN_FORWARD_CALL, REQUIRED_MEANINGS,
        )  # fmt: skip
        self._bwd = Binding(
            "aten._flash_attention_backward", schema_parameters(self._backward._schema),
            _ATEN_BACKWARD_FIXED, _ATEN_BACKWARD_CALL, REQUIRED_MEANINGS,
        )  # fmt: skip

    @staticmethod
    def _values(q, k, v, call: KernelCall, scale: float) -> dict:
        return {
            "query": q, "key": k, "value": v, "cum_seq_q": call.cu_q, "cum_seq_k": call.cu_k,
            "max_q": call.max_q, "max_k": call.max_k, "is_causal": call.causal, "scale": scale,
        }  # fmt: skip

    def forward(self, q, k, v, call: KernelCall, scale: float):
        """``(out [Tq, h, d] like q, lse [h, Tq] fp32, rng tensors for the backward)``."""
        result = self._forward(**self._fwd.kwargs(**self._values(q, k, v, call, scale)))
        lse = rows_without_keys_at_minus_inf(result[self._lse])
        return result[self._out], lse, tuple(result[i] for i in self._rng)

    def backward(self, dout, q, k, v, out, lse, call: KernelCall, scale: float, aux):
        """``(dq, dk, dv)`` like q, k, v; ``aux`` is the forward's rng pair (unused without dropout)."""
        values = self._values(q, k, v, call, scale)
        values.update(grad_out=dout, out=out, logsumexp=lse.contiguous(), rng_state=aux[0], unused=aux[1])
        grads = self._backward(**self._bwd.kwargs(**values))
        return grads[0], grads[1], grads[2]


def check_varlen_lse(backend: AtenFlash) -> str:
    """Why ``backend``'s varlen forward does not return the log-sum-exp as fp32 ``[heads, total_q]`` on meta
    tensors ('' when it does)."""
    q = torch.empty(6, 2, 8, dtype=torch.bfloat16, device="meta")
    kv = torch.empty(6, 1, 8, dtype=torch.bfloat16, device="meta")
    sequences = (np.array([0, 2]), np.array([2, 4]))  # (starts, lengths)
    call = kernel_call(True, sequences, sequences, torch.device("meta"))
    lse = backend.forward(q, kv, kv, call, 1.0)[1]
    if tuple(lse.shape) != (2, 6) or lse.dtype != torch.float32:
        return f"aten flash varlen log-sum-exp is {lse.dtype} {list(lse.shape)}, not fp32 [heads, total_q]"
    return ""


def aten_flash(ops=None) -> tuple[AtenFlash | None, str]:
    """The aten backend over ``ops`` (default ``torch.ops.aten``) when its ops bind and its varlen lse is
    ``[h, total_q]``; else None and the reason."""
    try:
        backend = AtenFlash(ops)
        reason = check_varlen_lse(backend)
    except Exception as err:  # missing ops, a schema that does not bind, no meta kernel
        return None, f"aten flash ops unusable: {type(err).__name__}: {err}"
    return (None, reason) if reason else (backend, "")


@functools.cache
def _installed_aten_flash() -> tuple[AtenFlash | None, str]:
    return aten_flash()


def aten_flash_supported() -> tuple[bool, str]:
    """Whether this torch's aten flash ops bind and return the log-sum-exp layout used here."""
    backend, reason = _installed_aten_flash()
    return backend is not None, reason


def shared_reason(device: torch.device, dtype: torch.dtype, head_dim: int | None) -> str:
    """Why no flash kernel runs ``dtype`` heads of ``head_dim`` on ``device`` ('' when one may)."""
    if device.type != "cuda":
        return f"needs CUDA tensors (got {device})"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash kernels take fp16/bf16, not {dtype}"
    return head_dim_reason(head_dim)


def gpu_backend_status(
    name: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None
) -> tuple[bool, str]:
    """Whether GPU backend ``name`` runs ``dtype`` heads of ``head_dim`` on ``device``, and if not, why."""
    from megatron_anchor.attention.flash_packages import installed_package

    reason = shared_reason(device, dtype, head_dim)
    if reason:
        return False, reason
    major, minor = torch.cuda.get_device_capability(device)
    if name == "flash_attn3" and major != 9:
        return False, "FlashAttention-3 needs a Hopper GPU (sm90)"
    if name != "flash_attn3" and major < FLASH2_MIN_CAPABILITY:
        return False, f"the FlashAttention-2 kernels need sm80 or newer, this GPU is sm{major}{minor}"
    if name == "flash":
        return aten_flash_supported()
    backend, reason = installed_package(name)
    if backend is None:
        return False, reason
    reason = backend.head_dim_reason(head_dim)
    return not reason, reason


def best_gpu_backend(
    device: torch.device, dtype: torch.dtype, head_dim: int | None = None
) -> tuple[str | None, str]:
    """``flash_attn3`` on Hopper when installed and usable, else torch's ``flash``, else None; and why an
    installed FlashAttention-3 was passed over ('' when it was not, or is not installed)."""
    from megatron_anchor.attention.flash_packages import package_installed

    ok, why = gpu_backend_status("flash_attn3", device, dtype, head_dim)
    if ok:
        return "flash_attn3", ""
    installed = package_installed("flash_attn3") and not shared_reason(device, dtype, head_dim)
    passed_over = f"the installed flash_attn3 is not used: {why}" if installed else ""
    return ("flash" if gpu_backend_status("flash", device, dtype, head_dim)[0] else None), passed_over


def make_backend(name: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None):
    """The GPU backend ``name``, or a RuntimeError saying why it cannot run here."""
    from megatron_anchor.attention.flash_packages import installed_package

    ok, reason = gpu_backend_status(name, device, dtype, head_dim)
    if not ok:
        raise RuntimeError(f"attention backend {name!r} cannot run: {reason}")
    return _installed_aten_flash()[0] if name == "flash" else installed_package(name)[0]
