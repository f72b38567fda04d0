"""GPU variable-length flash kernels behind the contract of ``backends.py``, gated on their signatures.

- ``flash``: torch's own FlashAttention-2 (``aten._flash_attention_forward/_backward`` with ``cum_seq_q/k``).
  ``torch.nn.attention.varlen.varlen_attn`` calls exactly these ops; they are called directly because the
  backward must take the merged ``out``/``lse`` of the whole ring, not the call's own.
- ``flash_attn3``: FlashAttention-3 (``flash_attn_interface``, Hopper) when importable.
- ``flash_attn2``: the ``flash_attn`` package's FlashAttention-2 when importable (2.6 or newer).

Every call is one kernel launch for all sequences of a ring step, GQA native (K/V keep ``h_kv`` heads).
Op schemas and Python signatures differ across versions: arguments are bound by name from what the
installed version declares, and a version lacking a required argument is reported unavailable.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable

import torch

from megatron_anchor.attention.plan import KernelCall

GPU_BACKENDS = ("flash", "flash_attn2", "flash_attn3")
_ATEN_FORWARD = (
    "query", "key", "value", "cum_seq_q", "cum_seq_k", "max_q", "max_k", "dropout_p", "is_causal",
    "return_debug_mask",
)  # fmt: skip
_ATEN_BACKWARD = (
    "grad_out", "query", "key", "value", "out", "logsumexp", "cum_seq_q", "cum_seq_k", "max_q", "max_k",
    "dropout_p", "is_causal",
)  # fmt: skip


def _schema_names(op) -> list[str]:
    return [a.name for a in op.default._schema.arguments]


@functools.cache
def aten_flash_supported() -> tuple[bool, str]:
    """Whether this torch's aten flash ops have the varlen schema and log-sum-exp layout used here."""
    try:
        forward = _schema_names(torch.ops.aten._flash_attention_forward)
        backward = _schema_names(torch.ops.aten._flash_attention_backward)
    except (AttributeError, RuntimeError) as err:
        return False, f"aten flash ops missing: {err}"
    if tuple(forward[: len(_ATEN_FORWARD)]) != _ATEN_FORWARD or "scale" not in forward:
        return False, f"unexpected aten._flash_attention_forward schema {forward}"
    if tuple(backward[: len(_ATEN_BACKWARD)]) != _ATEN_BACKWARD or len(backward) < len(_ATEN_BACKWARD) + 2:
        return False, f"unexpected aten._flash_attention_backward schema {backward}"
    return _varlen_lse_layout()


def _varlen_lse_layout() -> tuple[bool, str]:
    """The varlen forward must return the log-sum-exp as ``[h, total_q]`` (checked on meta tensors)."""
    q = torch.empty(6, 2, 8, dtype=torch.bfloat16, device="meta")
    kv = torch.empty(6, 1, 8, dtype=torch.bfloat16, device="meta")
    cu = torch.tensor([0, 2, 6], dtype=torch.int32, device="meta")
    lse = torch.ops.aten._flash_attention_forward(q, kv, kv, cu, cu, 4, 4, 0.0, True, False, scale=1.0)[1]
    if tuple(lse.shape) != (2, 6) or lse.dtype != torch.float32:
        got = f"{lse.dtype} {list(lse.shape)}"
        return False, f"aten flash varlen log-sum-exp is {got}, not fp32 [heads, total_q]"
    return True, ""


class AtenFlash:
    """torch's FlashAttention-2 varlen kernels through the aten ops."""

    name = "flash"

    def forward(self, q, k, v, call: KernelCall, scale: float):
        """``(out [Tq, h, d] like q, lse [h, Tq] fp32, rng tensors for the backward)``."""
        result = torch.ops.aten._flash_attention_forward(
            q, k, v, call.cu_q, call.cu_k, call.max_q, call.max_k, 0.0, call.causal, False, scale=scale
        )
        return result[0], result[1], (result[2], result[3])  # the rng pair: (seed, offset) / (state, unused)

    def backward(self, dout, q, k, v, out, lse, call: KernelCall, scale: float, aux):
        """``(dq, dk, dv)`` like q, k, v; ``aux`` is the forward's rng pair (unused without dropout)."""
        grads = torch.ops.aten._flash_attention_backward(
            dout, q, k, v, out, lse.contiguous(), call.cu_q, call.cu_k, call.max_q, call.max_k, 0.0,
            call.causal, *aux, scale=scale,
        )  # fmt: skip
        return grads[0], grads[1], grads[2]


# Optional arguments of the packages' private varlen functions that this project leaves off.
_UNUSED = dict.fromkeys(
    "k_new v_new qv out cu_seqlens_k_new seqused_q seqused_k sequed_q sequed_k page_table kv_batch_idx "
    "leftpad_k rotary_cos rotary_sin seqlens_rotary q_descale k_descale v_descale block_table "
    "scheduler_metadata alibi_slopes pack_gqa".split()
)
_DEFAULTS = {
    **_UNUSED, "window_size": (-1, -1), "window_size_left": -1, "window_size_right": -1, "softcap": 0.0,
    "dropout_p": 0.0, "deterministic": False, "return_softmax": False, "zero_tensors": False,
    "attention_chunk": 0, "num_splits": 1, "sm_margin": 0, "rotary_interleaved": True,
}  # fmt: skip
_FORWARD_ARGS = {
    "q",
    "k",
    "v",
    "cu_seqlens_q",
    "cu_seqlens_k",
    "max_seqlen_q",
    "max_seqlen_k",
    "softmax_scale",
    "causal",
}
_BACKWARD_ARGS = _FORWARD_ARGS | {"dout", "out", "softmax_lse", "dq", "dk", "dv", "rng_state"}


def _parameters(fn: Callable) -> dict:
    """``fn``'s parameters; for a ``torch.library.custom_op`` (flash-attn 2.7 wraps its functions so, and the
    wrapper's own signature is ``(*args, **kwargs)``) those of the function it wraps."""
    return dict(inspect.signature(getattr(fn, "_init_fn", fn)).parameters)


def _bind(fn: Callable, values: dict) -> dict:
    """Keyword arguments for ``fn`` from ``values`` by parameter name; a required unknown one raises."""
    kwargs = {}
    for name, param in _parameters(fn).items():
        if name in values:
            kwargs[name] = values[name]
        elif param.default is param.empty and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"{fn.__module__}.{fn.__name__} needs '{name}', which this project does not pass")
    return kwargs


def _varlen_function(module, names: tuple[str, ...], known: set[str]) -> Callable:
    """The first of ``names`` in ``module`` taking ``cu_seqlens_q`` whose required arguments are all known."""
    for name in names:
        fn = getattr(module, name, None)
        if fn is not None and "cu_seqlens_q" in _parameters(fn):
            _bind(fn, {**_DEFAULTS, **dict.fromkeys(known)})  # raises on an argument nobody passes
            return fn
    raise ImportError(f"{module.__name__} has no varlen function among {names}")


def _lse_of(result: tuple, q: torch.Tensor) -> torch.Tensor:
    """The ``[h, Tq]`` fp32 log-sum-exp among a forward's outputs (its position differs across versions)."""
    for t in result[1:]:
        if (
            isinstance(t, torch.Tensor)
            and t.dtype == torch.float32
            and tuple(t.shape) == (q.shape[1], q.shape[0])
        ):
            return t
    raise RuntimeError("the flash forward returned no [heads, total_q] fp32 log-sum-exp")


class FlashAttnPackage:
    """The ``flash_attn`` (FA2) or ``flash_attn_interface`` (FA3) private varlen forward/backward."""

    def __init__(self, name: str, forward: Callable, backward: Callable) -> None:
        self.name, self._forward, self._backward = name, forward, backward

    @staticmethod
    def _values(call: KernelCall, scale: float, **tensors) -> dict:
        return {
            **_DEFAULTS, **tensors, "cu_seqlens_q": call.cu_q, "cu_seqlens_k": call.cu_k,
            "max_seqlen_q": call.max_q, "max_seqlen_k": call.max_k, "softmax_scale": scale,
            "causal": call.causal,
        }  # fmt: skip

    def forward(self, q, k, v, call: KernelCall, scale: float):
        """``(out, lse [h, Tq] fp32, the rng state for the backward)``."""
        result = self._forward(**_bind(self._forward, self._values(call, scale, q=q, k=k, v=v)))
        rng = result[-1] if isinstance(result[-1], torch.Tensor) and result[-1].dtype == torch.int64 else None
        return result[0], _lse_of(result, q), rng

    def backward(self, dout, q, k, v, out, lse, call: KernelCall, scale: float, aux):
        """``(dq, dk, dv)`` like q, k, v (written by the kernel into preallocated buffers)."""
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        values = self._values(
            call, scale, dout=dout.contiguous(), q=q, k=k, v=v, out=out, softmax_lse=lse.contiguous(),
            dq=dq, dk=dk, dv=dv, rng_state=aux,
        )  # fmt: skip
        self._backward(**_bind(self._backward, values))
        return dq, dk, dv


_PACKAGES = {
    "flash_attn2": (
        "flash_attn.flash_attn_interface",
        ("_flash_attn_varlen_forward",),
        ("_flash_attn_varlen_backward",),
    ),
    "flash_attn3": (
        "flash_attn_interface",
        ("_flash_attn_forward", "_flash_attn_varlen_forward"),
        ("_flash_attn_backward", "_flash_attn_varlen_backward"),
    ),
}


@functools.cache
def _package(name: str) -> tuple[FlashAttnPackage | None, str]:
    """The package backend when it imports and its signatures bind, else None and the reason."""
    module_name, forwards, backwards = _PACKAGES[name]
    try:
        module = importlib.import_module(module_name)
        backend = FlashAttnPackage(
            name,
            _varlen_function(module, forwards, _FORWARD_ARGS),
            _varlen_function(module, backwards, _BACKWARD_ARGS),
        )
    except Exception as err:  # a broken CUDA extension raises more than ImportError
        return None, f"{module_name} unusable: {type(err).__name__}: {err}"
    return backend, ""


def gpu_backend_status(name: str, device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether GPU backend ``name`` runs for ``dtype`` tensors on ``device``, and if not, why."""
    if device.type != "cuda":
        return False, f"needs CUDA tensors (got {device})"
    if dtype not in (torch.float16, torch.bfloat16):
        return False, f"flash kernels take fp16/bf16, not {dtype}"
    if name == "flash":
        return aten_flash_supported()
    if name == "flash_attn3" and torch.cuda.get_device_capability(device)[0] != 9:
        return False, "FlashAttention-3 needs a Hopper GPU (sm90)"
    backend, reason = _package(name)
    return backend is not None, reason


def best_gpu_backend(device: torch.device, dtype: torch.dtype) -> str | None:
    """``flash_attn3`` on Hopper when installed, else torch's ``flash``; None when neither runs."""
    for name in ("flash_attn3", "flash"):
        if gpu_backend_status(name, device, dtype)[0]:
            return name
    return None


def make_backend(name: str, device: torch.device, dtype: torch.dtype):
    """The GPU backend ``name``, or a RuntimeError saying why it cannot run here."""
    ok, reason = gpu_backend_status(name, device, dtype)
    if not ok:
        raise RuntimeError(f"attention backend {name!r} cannot run: {reason}")
    return AtenFlash() if name == "flash" else _package(name)[0]
