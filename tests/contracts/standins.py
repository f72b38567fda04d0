"""Stand-ins of the GPU routes generated from the recorded contracts (the ``*.json`` beside this file).

A stand-in has the recorded names, parameters (kinds, defaults; for ``torch.library`` custom ops the
annotations and the op wrapping), returned tuple and log-sum-exp layout, and computes dense attention in
fp64 from the ``cu_seqlens`` it is given. It honours every parameter that changes the math as the kernel
does (the causal flag under whatever name, the scale, a window, a softcap) and raises on any other feature
set away from neutral (dropout, ALiBi, paging, ...): a parameter a binder leaves at the package's default
changes the result here exactly as on the GPU.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import math
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional, Sequence, Union  # noqa: UP035  (the recorded annotations' names)

import torch

HERE = Path(__file__).resolve().parent
# torch's wheels do not ship its vendored FlashAttention-2 kernel sources: modelled as FlashAttention-2's own
# (csrc/flash_attn/src/softmax.h writes +INFINITY for a row that sees no key).
ATEN_EMPTY_ROW_LSE = "+inf"
_ALIASES = {
    "query": "q", "key": "k", "value": "v", "cum_seq_q": "cu_seqlens_q", "cum_seq_k": "cu_seqlens_k",
    "max_q": "max_seqlen_q", "max_k": "max_seqlen_k", "is_causal": "causal", "scale": "softmax_scale",
    "grad_out": "dout", "logsumexp": "softmax_lse",
}  # fmt: skip
# Features without a stand-in: their neutral values; anything else raises.
_NEUTRAL = {
    "dropout_p": (0.0,), "alibi_slopes": (None,), "seqused_q": (None,), "seqused_k": (None,),
    "sequed_q": (None,), "sequed_k": (None,), "block_table": (None,), "leftpad_k": (None,), "k_new": (None,),
    "v_new": (None,), "qv": (None,), "page_table": (None,), "kv_batch_idx": (None,), "rotary_cos": (None,),
    "rotary_sin": (None,), "seqlens_rotary": (None,), "q_descale": (None,), "k_descale": (None,),
    "v_descale": (None,), "descale_q": (None,), "descale_k": (None,), "descale_v": (None,),
    "attention_chunk": (0,), "cu_seqlens_k_new": (None,), "out_": (None,), "start_positions": (None,),
}  # fmt: skip


@functools.cache
def contracts(family: str) -> dict:
    """The recorded contracts of ``family`` (``aten_flash``, ``flash_attn``, ``flash_attn3``, ``te_rope``)."""
    return json.loads((HERE / f"{family}.json").read_text())


# ------------------------------------------------------------------------------------------------ the math
def _normalised(arguments: dict) -> dict:
    """Arguments under one spelling each; raises on a feature set away from neutral that has no stand-in."""
    args = {_ALIASES.get(name, name): value for name, value in arguments.items()}
    for name, neutral in _NEUTRAL.items():
        if name in args and not any(args[name] is n or args[name] == n for n in neutral):
            raise NotImplementedError(f"stand-in: {name}={args[name]!r} changes the math")
    if args.get("return_softmax") or args.get("return_debug_mask"):
        raise NotImplementedError("stand-in: returning the attention probabilities")
    return args


def _window(args: dict) -> tuple[int, int]:
    left, right = args.get("window_size", (args.get("window_size_left"), args.get("window_size_right")))
    return (-1 if left is None else left), (-1 if right is None else right)


def _scores(args: dict) -> torch.Tensor:
    """fp64 ``[h, Tq, Tk]`` scores, -inf where the sequences, the causal flag and the window hide a key."""
    q, k = args["q"].double(), args["k"].double()
    scale = args.get("softmax_scale")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = torch.einsum("qhd,khd->hqk", q, k.repeat_interleave(q.shape[1] // k.shape[1], 1)) * scale
    if args.get("softcap", 0.0):
        s = args["softcap"] * torch.tanh(s / args["softcap"])
    cu_q, cu_k = args["cu_seqlens_q"].long(), args["cu_seqlens_k"].long()
    rows, cols = torch.arange(q.shape[0]), torch.arange(k.shape[0])
    q_seq, k_seq = (torch.searchsorted(cu[1:], x, right=True) for cu, x in ((cu_q, rows), (cu_k, cols)))
    shift = (cu_k[1:] - cu_k[:-1] - cu_q[1:] + cu_q[:-1])[q_seq]  # bottom-right alignment: m - n
    diagonal = (rows - cu_q[q_seq] + shift)[:, None]  # key position aligned with each query
    key_pos = (cols - cu_k[k_seq])[None, :]
    left, right = _window(args)
    if args["causal"]:
        right = 0
    mask = q_seq[:, None] == k_seq[None, :]
    if right >= 0:
        mask &= key_pos <= diagonal + right
    if left >= 0:
        mask &= key_pos >= diagonal - left
    return s.masked_fill(~mask, -math.inf)


def attention_forward(args: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out like q, lse [h, Tq] fp64)``; a row that sees no key: out 0, lse -inf."""
    s = _scores(args)
    lse = torch.logsumexp(s, -1)
    p = torch.exp(s - lse.masked_fill(lse.isinf(), 0.0)[..., None])
    v = args["v"].double().repeat_interleave(s.shape[0] // args["v"].shape[1], 1)
    return torch.einsum("hqk,khd->qhd", p, v).to(args["q"].dtype), lse


def attention_backward(args: dict, lse: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(dq, dk, dv)`` fp64 from the given (merged) ``out`` and ``lse [h, Tq]``."""
    q, k, v = args["q"], args["k"], args["v"]
    group = q.shape[1] // k.shape[1]
    s = _scores(args)
    lse = lse.double().masked_fill(~lse.isfinite(), math.inf)  # a row that sees no key has no gradient
    p = torch.exp(s - lse[..., None])
    dout, out = args["dout"].double(), args["out"].double()
    delta = (dout * out).sum(-1).t()  # [h, Tq]
    ds = p * (torch.einsum("qhd,khd->hqk", dout, v.double().repeat_interleave(group, 1)) - delta[..., None])
    scale = args.get("softmax_scale")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if args.get("softcap", 0.0):
        raise NotImplementedError("stand-in: softcap backward")
    dq = torch.einsum("hqk,khd->qhd", ds, k.double().repeat_interleave(group, 1)) * scale
    dk = torch.einsum("hqk,qhd->khd", ds, q.double()) * scale
    dv = torch.einsum("hqk,qhd->khd", p, dout)
    dk, dv = (t.view(t.shape[0], k.shape[1], group, -1).sum(2) for t in (dk, dv))
    return dq, dk, dv


def _lse_out(lse: torch.Tensor, args: dict, layout: str, empty_row: str) -> torch.Tensor:
    """fp32 in the recorded layout (``packed`` ``[h, Tq]``, ``padded`` ``[n, h, max_q]``) and no-key mark."""
    lse = lse.float().masked_fill(lse.isneginf(), math.inf if empty_row == "+inf" else -math.inf)
    if layout == "packed":
        return lse
    cu, max_q = args["cu_seqlens_q"].long(), args["max_seqlen_q"]
    padded = torch.full((len(cu) - 1, lse.shape[0], max_q), math.nan)
    for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        padded[i, :, : b - a] = lse[:, a:b]
    return padded


def _lse_in(lse: torch.Tensor, args: dict, layout: str) -> torch.Tensor:
    """The backward's log-sum-exp argument back to ``[h, Tq]``."""
    if layout == "packed":
        return lse
    cu = args["cu_seqlens_q"].long()
    return torch.cat(
        [lse[i, :, : b - a] for i, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist()))], 1
    )


def _placeholder(name: str, args: dict) -> torch.Tensor:
    if name == "rng_state":
        return torch.zeros(2, dtype=torch.int64)
    if name == "softmax_d":
        return torch.zeros(args["q"].shape[1], args["q"].shape[0])
    return torch.empty(0)  # S_dmask, p, debug_attn_mask, unused, out_accum, softmax_lse_accum


def forward_impl(returns: list[str], layout: str, empty_row: str) -> Callable[[dict], tuple]:
    """A forward computing from its arguments by name, returning the recorded tuple."""

    def run(arguments: dict) -> tuple:
        args = _normalised(arguments)
        if args["q"].is_meta:
            out, lse = torch.empty_like(args["q"]), torch.empty(args["q"].shape[1], args["q"].shape[0])
        else:
            out, lse = attention_forward(args)
        values = {
            "out": out,
            "output": out,
            "out_padded": out,
            "q": args["q"],
            "k": args["k"],
            "v": args["v"],
        }
        lse = lse.to(args["q"].device) if args["q"].is_meta else _lse_out(lse, args, layout, empty_row)
        values.update(softmax_lse=lse, softmax_logsumexp=lse)
        result = []
        for name in returns:
            if name.startswith("*"):  # the C++ op's further outputs (split-KV buffers), unrecorded in Python
                result += [torch.empty(0), torch.empty(0)]
            else:
                result.append(values[name] if name in values else _placeholder(name, args))
        return tuple(t.to(args["q"].device) for t in result)

    return run


def backward_impl(returns: list[str], layout: str) -> Callable[[dict], object]:
    """A backward writing dq/dk/dv into the buffers it is given (or returning them), as recorded."""

    def run(arguments: dict) -> object:
        args = _normalised(arguments)
        grads = attention_backward(args, _lse_in(args["softmax_lse"], args, layout))
        grads = [g.to(args[name].dtype) for g, name in zip(grads, ("q", "k", "v"))]
        for name, grad in zip(("dq", "dk", "dv"), grads):
            if args.get(name) is not None:
                args[name].copy_(grad)
        values = dict(zip(("dq", "dk", "dv"), grads))
        result = [values.get(name) if name in values else _placeholder(name, args) for name in returns]
        if not any(returns):  # aten: three unnamed returns, the gradients
            result = grads
        return result[0] if len(result) == 1 else tuple(result)

    return run


# -------------------------------------------------------------------------------- functions and op schemas
_ANNOTATIONS = {"torch": torch, "Optional": Optional, "Tuple": tuple, "Union": Union, "List": list,
                "Sequence": Sequence}  # fmt: skip
_KINDS = {"positional_or_keyword": inspect.Parameter.POSITIONAL_OR_KEYWORD,
          "keyword_only": inspect.Parameter.KEYWORD_ONLY}  # fmt: skip


def _signature(record: dict) -> inspect.Signature:
    params = []
    for p in record["parameters"]:
        default = eval(p["default"], {}) if "default" in p else inspect.Parameter.empty  # literals only
        annotation = inspect.Parameter.empty
        if p.get("annotation"):
            annotation = eval(p["annotation"], dict(_ANNOTATIONS))  # typing names of the recorded source
        params.append(inspect.Parameter(p["name"], _KINDS[p["kind"]], default=default, annotation=annotation))
    ret = record.get("return_annotation")
    return inspect.Signature(
        params, return_annotation=eval(ret, dict(_ANNOTATIONS)) if ret else inspect.Signature.empty
    )


def python_standin(record: dict, impl: Callable[[dict], object], module: str, op_namespace: str) -> Callable:
    """A function with ``record``'s name and signature calling ``impl`` with its arguments by name; wrapped as
    a ``torch.library`` custom op (in ``op_namespace``) where the recorded function is one."""
    signature = _signature(record)

    def standin(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return impl(dict(bound.arguments))

    standin.__signature__ = signature
    standin.__name__ = standin.__qualname__ = record["name"]
    standin.__module__ = module
    if "custom_op" not in record:
        return standin
    op_name = f"{op_namespace}::{record['custom_op']['op'].split('::')[1]}"
    return torch.library.custom_op(op_name, standin, mutates_args=tuple(record["custom_op"]["mutates_args"]))


class SchemaOp:
    """An aten op stand-in: ``.default`` with the recorded ``_schema``, called by the schema's names."""

    def __init__(self, schema: str, impl: Callable[[dict], object]) -> None:
        self._schema = torch._C.parse_schema(f"aten::{schema}")
        self._impl = impl
        self.default = self

    def __call__(self, *args, **kwargs):
        arguments = {}
        for i, a in enumerate(self._schema.arguments):
            if i < len(args) and not a.kwarg_only:
                arguments[a.name] = args[i]
            elif a.name in kwargs:
                arguments[a.name] = kwargs[a.name]
            elif a.has_default_value():
                arguments[a.name] = a.default_value
            else:
                raise TypeError(f"aten::{self._schema.name} missing '{a.name}'")
        return self._impl(arguments)


# ------------------------------------------------------------------------------------------------- routes
def aten_ops(version: str) -> types.SimpleNamespace:
    """``torch.ops.aten``'s two flash ops as torch ``version`` declares them."""
    c = contracts("aten_flash")[version]
    layout = "packed" if c["meta_lse"]["varlen"]["shape"] == "(num_heads, total_q)" else "padded"
    return types.SimpleNamespace(
        _flash_attention_forward=SchemaOp(
            c["forward"]["schema"], forward_impl(c["forward"]["returns"], layout, ATEN_EMPTY_ROW_LSE)
        ),
        _flash_attention_backward=SchemaOp(
            c["backward"]["schema"], backward_impl(c["backward"]["returns"], layout)
        ),
    )


@functools.cache
def package_functions(family: str, point: str) -> dict[str, Callable]:
    """The recorded varlen forward/backward of ``flash_attn`` / ``flash_attn3`` at ``point`` (one custom-op
    namespace per point: a process registers each once)."""
    c = contracts(family)[point]
    layout, empty_row = c["varlen_lse"]["layout"], c["empty_row_lse"]["value"]
    namespace = f"standin_{family}_{point}".replace(".", "_").replace("-", "_")
    forward = python_standin(
        c["forward"], forward_impl(c["forward"]["returns"], layout, empty_row), c["module"], namespace
    )
    backward = python_standin(
        c["backward"], backward_impl(c["backward"]["returns"], layout), c["module"], namespace
    )
    return {c["forward"]["name"]: forward, c["backward"]["name"]: backward}


def _module_tree(modules: dict[str, dict]) -> dict[str, types.ModuleType]:
    """Module objects for dotted names (parents created), each with the given attributes."""
    made: dict[str, types.ModuleType] = {}
    for dotted, attributes in modules.items():
        parts = dotted.split(".")
        for i in range(1, len(parts) + 1):
            name = ".".join(parts[:i])
            if name not in made:
                made[name] = types.ModuleType(name)
                made[name].__path__ = []  # a package: a missing submodule raises ModuleNotFoundError
                if i > 1:
                    setattr(made[".".join(parts[: i - 1])], parts[i - 1], made[name])
        for key, value in attributes.items():
            setattr(made[dotted], key, value)
    return made


@contextlib.contextmanager
def installed(modules: dict[str, dict]) -> Iterator[None]:
    """``modules`` (dotted name -> attributes) importable inside; ``sys.modules`` restored after."""
    made = _module_tree(modules)
    saved = {name: sys.modules.get(name) for name in made}
    sys.modules.update(made)
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def package_modules(family: str, point: str) -> dict[str, dict]:
    """The modules a package at ``point`` installs, holding its recorded functions (and ``__version__``)."""
    c = contracts(family)[point]
    modules = {c["module"]: dict(package_functions(family, point))}
    if family == "flash_attn":
        modules["flash_attn"] = {"__version__": c["version"]}
    return modules


def te_function(tag: str) -> Callable:
    """Transformer Engine ``tag``'s ``apply_rotary_pos_emb`` (unfused semantics, fp64)."""
    c = contracts("te_rope")[tag]
    return python_standin(c["function"], _te_rotate, c["module"], "standin_te")


def te_modules(tag: str) -> dict[str, dict]:
    """The modules from which TE ``tag`` lets ``apply_rotary_pos_emb`` be imported."""
    fn = te_function(tag)
    return {module: {"apply_rotary_pos_emb": fn} for module in contracts("te_rope")[tag]["importable_from"]}


def _rotate_half(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if not interleaved:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def _te_rotate(arguments: dict) -> torch.Tensor:
    """TE's rotation of ``t`` by ``freqs [s2, 1, 1, d2]`` (its unfused reference), in fp64, cast back."""
    args = _normalised(arguments)
    t, freqs, fmt = args["t"], args["freqs"], args["tensor_format"]
    if fmt not in ("sbhd", "bshd") or args.get("cu_seqlens") is not None:
        raise NotImplementedError(f"stand-in: tensor_format={fmt!r}")
    seq = t.shape[0] if fmt == "sbhd" else t.shape[1]
    cp_size, cp_rank = args.get("cp_size", 1), args.get("cp_rank", 0)
    if cp_size > 1:  # TE takes megatron-core's chunks: this rank's two halves of a 2*cp cut
        half = seq // 2
        full = cp_size * seq
        freqs = torch.cat([freqs[cp_rank * half : (cp_rank + 1) * half],
                           freqs[full - (cp_rank + 1) * half : full - cp_rank * half]])  # fmt: skip
    freqs = freqs[:seq].double()
    if fmt == "bshd":
        freqs = freqs.transpose(0, 1)
    rot = freqs.shape[-1]
    x, rest = t[..., :rot].double(), t[..., rot:]
    out = x * freqs.cos() + _rotate_half(x, args.get("interleaved", False)) * freqs.sin()
    return torch.cat([out.to(t.dtype), rest], dim=-1)
