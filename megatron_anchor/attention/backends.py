"""Variable-length attention kernels behind one contract, and their selection.

The contract (FlashAttention's varlen call): packed ``q [Tq, h, d]``, ``k, v [Tk, h_kv, d]`` (GQA: ``h_kv``
divides ``h``), the sequences of a ``KernelCall`` (int32 ``cu_q``/``cu_k`` offsets; causal means
bottom-right aligned: query ``i`` of a sequence with ``n`` queries and ``m`` keys sees keys ``<= i + m - n``).
``forward`` returns ``(out [Tq, h, d] like q, lse [h, Tq] fp32 natural log with the scale, aux)``, a row
that sees no key having out 0 and lse -inf;
``backward`` takes the *final merged* ``out``/``lse`` of the rows (which makes each call's gradient exact:
``P = exp(s - lse)``, ``delta = rowsum(dout * out)``) and returns ``(dq, dk, dv)`` shaped like q, k, v.

- ``varlen_reference``: dense masked attention in plain torch from the ``cu`` tensors alone (no host
  reads); exactly the contract, for tests of the code that drives the GPU kernels.
- ``sdpa_cpu`` (``attention/cpu_kernels.py``): aten's CPU flash kernels.
- ``torch``: tiled online-softmax matmuls in fp32, any device (the GPU fallback for fp32 inputs).
- ``flash`` / ``flash_attn2`` / ``flash_attn3`` (``attention/flash.py``, ``flash_packages.py``): the GPU
  kernels.
"""

from __future__ import annotations

import torch

from megatron_anchor.attention.cpu_kernels import SdpaCpu
from megatron_anchor.attention.heads import expand_kv_heads, reduce_kv_heads
from megatron_anchor.attention.merge import finite_lse
from megatron_anchor.attention.plan import KernelCall

BACKENDS = ("auto", "varlen_reference", "sdpa_cpu", "torch", "flash", "flash_attn2", "flash_attn3")
BLOCK = 512  # tile edge of the torch kernel: [h, 512, 512] fp32 scores at a time


def _dense_mask(call: KernelCall, n_q: int, n_k: int, device: torch.device) -> torch.Tensor:
    """Bool ``[Tq, Tk]`` mask of a call's sequences, from the device ``cu`` tensors only."""
    cu_q, cu_k = call.cu_q.long(), call.cu_k.long()
    rows, cols = torch.arange(n_q, device=device), torch.arange(n_k, device=device)
    q_seq = torch.searchsorted(cu_q[1:], rows, right=True)  # [Tq] sequence of each query row
    k_seq = torch.searchsorted(cu_k[1:], cols, right=True)
    mask = q_seq[:, None] == k_seq[None, :]
    if call.causal:
        q_pos, k_pos = rows - cu_q[q_seq], cols - cu_k[k_seq]
        shift = (cu_k[1:] - cu_k[:-1] - cu_q[1:] + cu_q[:-1])[q_seq]  # m - n of the query's sequence
        mask &= k_pos[None, :] <= (q_pos + shift)[:, None]
    return mask


class VarlenReference:
    """Dense masked attention with the varlen contract (test backend: memory grows as Tq x Tk)."""

    name = "varlen_reference"

    def _scores(self, q, k, call: KernelCall, scale: float) -> torch.Tensor:
        kf = expand_kv_heads(k.float(), q.shape[1])
        s = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale  # [h, Tq, Tk]
        mask = _dense_mask(call, q.shape[0], k.shape[0], q.device)
        return s.masked_fill(~mask, float("-inf"))

    def forward(self, q, k, v, call: KernelCall, scale: float):
        """``(out [Tq, h, d] like q, lse [h, Tq] fp32, None)``; rows without keys get out 0, lse -inf."""
        s = self._scores(q, k, call, scale)
        lse = torch.logsumexp(s, dim=-1)  # [h, Tq]
        p = torch.exp(s - lse.masked_fill(lse.isinf(), 0.0)[..., None])
        out = torch.einsum("hqk,khd->qhd", p, expand_kv_heads(v.float(), q.shape[1]))
        return out.to(q.dtype), lse, None

    def backward(self, dout, q, k, v, out, lse, call: KernelCall, scale: float, aux=None):
        """``(dq, dk, dv)`` like q, k, v from the merged ``out``/``lse``."""
        heads, heads_kv = q.shape[1], k.shape[1]
        p = torch.exp(self._scores(q, k, call, scale) - finite_lse(lse)[..., None])  # [h, Tq, Tk]
        dof, vf = dout.float(), expand_kv_heads(v.float(), heads)
        delta = (dof * out.float()).sum(-1).t()  # [h, Tq]
        ds = p * (torch.einsum("qhd,khd->hqk", dof, vf) - delta[..., None])
        dq = torch.einsum("hqk,khd->qhd", ds, expand_kv_heads(k.float(), heads)) * scale
        dk = torch.einsum("hqk,qhd->khd", ds, q.float()) * scale
        dv = torch.einsum("hqk,qhd->khd", p, dof)
        dk, dv = reduce_kv_heads(dk, heads_kv), reduce_kv_heads(dv, heads_kv)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _blocks(n: int, m: int, causal: bool):
    """``(i0, i1, j0, j1, diagonal or None)`` sub-blocks of one sequence with any visible pair."""
    shift = m - n  # bottom-right alignment: query i sees keys <= i + shift
    for i0 in range(0, n, BLOCK):
        i1 = min(i0 + BLOCK, n)
        for j0 in range(0, m, BLOCK):
            j1 = min(j0 + BLOCK, m)
            if causal and j0 > i1 - 1 + shift:
                break
            full = not causal or j1 - 1 <= i0 + shift
            yield i0, i1, j0, j1, None if full else i0 - j0 + shift


def _scores(q, k, diagonal: int | None) -> torch.Tensor:
    """``q @ k^T`` ``[h, bi, bj]`` (q scaled), pairs above ``diagonal`` at -inf (made on q's device)."""
    s = q @ k.transpose(-1, -2)
    if diagonal is None:
        return s
    keep = torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(diagonal)
    return s.masked_fill_(~keep, float("-inf"))


class TorchTiled:
    """Flash-style tiled attention in plain torch ops (fp32 math), per sequence, forward and backward."""

    name = "torch"

    def forward(self, q, k, v, call: KernelCall, scale: float):
        """``(out [Tq, h, d] like q, lse [h, Tq] fp32, None)``."""
        heads = q.shape[1]
        qf = q.float().transpose(0, 1) * scale  # [h, Tq, d]
        kf, vf = (expand_kv_heads(t.float(), heads).transpose(0, 1) for t in (k, v))
        out = torch.zeros_like(qf)
        lse = torch.full(qf.shape[:-1], float("-inf"), device=q.device)
        cu_q, cu_k = call.host_cu_q.tolist(), call.host_cu_k.tolist()
        for a, b, c, e in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]):
            row_max = torch.full((heads, b - a), float("-inf"), device=q.device)
            row_sum = torch.zeros_like(row_max)
            acc = out[:, a:b]
            for i0, i1, j0, j1, diag in _blocks(b - a, e - c, call.causal):
                s = _scores(qf[:, a + i0 : a + i1], kf[:, c + j0 : c + j1], diag)  # [h, bi, bj]
                new_max = torch.maximum(row_max[:, i0:i1], s.amax(-1))
                safe_max = new_max.masked_fill(torch.isneginf(new_max), 0.0)  # no key yet: p, alpha 0
                p = s.sub_(safe_max[..., None]).exp_()
                alpha = torch.exp(row_max[:, i0:i1] - safe_max)
                row_sum[:, i0:i1] = row_sum[:, i0:i1] * alpha + p.sum(-1)
                acc[:, i0:i1] = acc[:, i0:i1] * alpha[..., None] + p @ vf[:, c + j0 : c + j1]
                row_max[:, i0:i1] = new_max
            acc /= row_sum.clamp_min(torch.finfo(torch.float32).tiny)[..., None]  # no key: out 0
            lse[:, a:b] = row_max + row_sum.log()  # no key: log 0 = -inf
        return out.transpose(0, 1).to(q.dtype), lse, None

    def backward(self, dout, q, k, v, out, lse, call: KernelCall, scale: float, aux=None):
        """``(dq, dk, dv)`` fp32, shaped like q, k, v."""
        heads, heads_kv = q.shape[1], k.shape[1]
        qf = q.float().transpose(0, 1) * scale
        kf, vf = (expand_kv_heads(t.float(), heads).transpose(0, 1) for t in (k, v))
        dof = dout.float().transpose(0, 1)
        delta = (dof * out.float().transpose(0, 1)).sum(-1, keepdim=True)  # [h, Tq, 1]
        lse_f = finite_lse(lse)
        dq, dk, dv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
        cu_q, cu_k = call.host_cu_q.tolist(), call.host_cu_k.tolist()
        for a, b, c, e in zip(cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]):
            for i0, i1, j0, j1, diag in _blocks(b - a, e - c, call.causal):
                rows, keys = slice(a + i0, a + i1), slice(c + j0, c + j1)
                p = _scores(qf[:, rows], kf[:, keys], diag).sub_(lse_f[:, rows, None]).exp_()
                dv[:, keys] += p.transpose(-1, -2) @ dof[:, rows]
                ds = p * (dof[:, rows] @ vf[:, keys].transpose(-1, -2) - delta[:, rows])
                dq[:, rows] += ds @ kf[:, keys] * scale
                dk[:, keys] += ds.transpose(-1, -2) @ qf[:, rows]  # q carries the scale already
        dk, dv = (reduce_kv_heads(t.transpose(0, 1), heads_kv) for t in (dk, dv))
        return dq.transpose(0, 1), dk, dv


def _note_once(text: str) -> None:
    """Print ``text`` once per process (on rank 0 when torch.distributed is initialised)."""
    if text in _NOTED:
        return
    _NOTED.add(text)
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        print(f"note: attention kernel: {text}", flush=True)


_NOTED: set[str] = set()


def select_backend(name, device: torch.device, dtype: torch.dtype, head_dim: int | None = None):
    """The backend object for ``name`` (``auto``: the fastest that runs on ``device`` for ``dtype`` heads of
    ``head_dim`` channels; a GPU fallback is noted once with its reason). A backend object passes through."""
    from megatron_anchor.attention import flash

    if not isinstance(name, str):
        return name
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {BACKENDS}")
    if name == "auto":
        if device.type == "cuda":
            name, passed_over = flash.best_gpu_backend(device, dtype, head_dim)
            name = name or "torch"
            if passed_over:
                _note_once(f"{passed_over} (auto takes {name!r})")
            if name == "torch":
                why = flash.gpu_backend_status("flash", device, dtype, head_dim)[1]
                _note_once(f"'torch' (tiled fp32 matmuls), no flash kernel runs: {why}")
        else:
            name = "sdpa_cpu" if SdpaCpu.available() else "torch"
    if name == "sdpa_cpu" and (device.type != "cpu" or not SdpaCpu.available()):
        raise RuntimeError(f"attention backend 'sdpa_cpu' needs CPU tensors and aten's CPU ops ({device})")
    if name in flash.GPU_BACKENDS:
        return flash.make_backend(name, device, dtype, head_dim)
    return {"varlen_reference": VarlenReference, "sdpa_cpu": SdpaCpu, "torch": TorchTiled}[name]()
