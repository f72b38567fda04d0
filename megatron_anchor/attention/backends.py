"""Kernel backends: one tile of attention forward ``(out, lse)`` and backward from the merged ``(out, lse)``.

A tile is ``q [B, h, n, d]`` against ``k, v [B, h, m, d]`` (heads already expanded for GQA) of one kind:
``full``, ``causal`` (n == m, lower triangle) or ``masked`` (``mask [n, m]`` bool). ``lse [B, h, n]`` is
fp32, natural log, scale included. Backward takes the *final* merged out/lse of the rows, which makes the
gradients of a partial tile exact (P = exp(s - lse), delta = rowsum(dout * out)).

- ``torch``: tiled online-softmax matmuls in fp32; any device; the reference-quality kernel.
- ``sdpa_cpu``: aten's CPU flash kernels (``_scaled_dot_product_flash_attention_for_cpu[_backward]``).
- ``flex``: ``flex_attention`` with a block mask on CUDA for the forward, the torch kernel's backward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

BACKENDS = ("auto", "torch", "sdpa_cpu", "flex")
BLOCK = 512  # tile edge of the torch kernel: [B, h, 512, 512] fp32 scores at a time


def _blocks(n: int, m: int, kind: str, mask: torch.Tensor | None) -> Iterator[tuple]:
    """Non-empty (i0, i1, j0, j1, block mask or None) sub-blocks of a tile, row block by row block."""
    for i0 in range(0, n, BLOCK):
        i1 = min(i0 + BLOCK, n)
        for j0 in range(0, m, BLOCK):
            j1 = min(j0 + BLOCK, m)
            if kind == "causal":
                if j0 >= i1:
                    break
                sub = None if j1 <= i0 + 1 else torch.ones(i1 - i0, j1 - j0, dtype=torch.bool).tril(i0 - j0)
            elif kind == "masked":
                sub = mask[i0:i1, j0:j1]
                if not bool(sub.any()):
                    continue
            else:
                sub = None
            yield i0, i1, j0, j1, sub


def _scores(q, k, sub) -> torch.Tensor:
    """``q @ k^T`` ``[B, h, bi, bj]`` with masked-out pairs at -inf (q already scaled)."""
    s = q @ k.transpose(-1, -2)
    return s if sub is None else s.masked_fill_(~sub.to(s.device), float("-inf"))


class TorchTiled:
    """Flash-style tiled attention in plain torch ops (fp32 math), forward and backward."""

    name = "torch"

    def forward(self, q, k, v, kind: str, mask, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Tile forward: ``(out [B, h, n, d] fp32, lse [B, h, n] fp32)``, online softmax per row block."""
        qf, kf, vf = q.float() * scale, k.float(), v.float()
        acc = torch.zeros_like(qf)  # unnormalised sum of p v
        row_max = torch.full(q.shape[:-1], float("-inf"), dtype=torch.float32, device=q.device)
        row_sum = torch.zeros_like(row_max)
        for i0, i1, j0, j1, sub in _blocks(q.shape[2], k.shape[2], kind, mask):
            s = _scores(qf[:, :, i0:i1], kf[:, :, j0:j1], sub)  # [B, h, bi, bj]
            old_max = row_max[:, :, i0:i1]
            new_max = torch.maximum(old_max, s.amax(-1))
            safe = _finite(new_max)
            p = s.sub_(safe[..., None]).exp_()
            alpha = torch.exp(old_max - safe)
            row_sum[:, :, i0:i1] = row_sum[:, :, i0:i1] * alpha + p.sum(-1)
            acc[:, :, i0:i1] = acc[:, :, i0:i1] * alpha[..., None] + p @ vf[:, :, j0:j1]
            row_max[:, :, i0:i1] = new_max
        lse = _finite(row_max) + row_sum.log()  # -inf where a row saw no key
        return acc / row_sum.clamp_min(torch.finfo(torch.float32).tiny)[..., None], lse

    def backward(self, dout, q, k, v, out, lse, kind: str, mask, scale: float):
        """Tile backward: ``(dq, dk, dv)`` fp32 like q, k, v."""
        qf, kf, vf, dof = q.float() * scale, k.float(), v.float(), dout.float()
        delta = (dof * out.float()).sum(-1, keepdim=True)  # [B, h, n, 1]
        dq, dk, dv = torch.zeros_like(qf), torch.zeros_like(kf), torch.zeros_like(vf)
        for i0, i1, j0, j1, sub in _blocks(q.shape[2], k.shape[2], kind, mask):
            p = _scores(qf[:, :, i0:i1], kf[:, :, j0:j1], sub).sub_(lse[:, :, i0:i1, None]).exp_()
            dv[:, :, j0:j1] += p.transpose(-1, -2) @ dof[:, :, i0:i1]
            ds = p * (dof[:, :, i0:i1] @ vf[:, :, j0:j1].transpose(-1, -2) - delta[:, :, i0:i1])
            dq[:, :, i0:i1] += ds @ kf[:, :, j0:j1] * scale
            dk[:, :, j0:j1] += ds.transpose(-1, -2) @ qf[:, :, i0:i1]  # q carries the scale already
        return dq, dk, dv


class SdpaCpu:
    """aten's CPU flash-attention kernels, one call per tile (masked tiles get an additive mask)."""

    name = "sdpa_cpu"

    @staticmethod
    def available() -> bool:
        return hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward")

    @staticmethod
    def _mask(mask, kind: str, like: torch.Tensor):
        if kind != "masked":
            return None
        return torch.zeros(mask.shape, dtype=like.dtype, device=like.device).masked_fill(~mask, float("-inf"))

    def forward(self, q, k, v, kind: str, mask, scale: float):
        """Tile forward: ``(out [B, h, n, d] like q, lse [B, h, n] fp32)``."""
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, kind == "causal", attn_mask=self._mask(mask, kind, q), scale=scale
        )

    def backward(self, dout, q, k, v, out, lse, kind: str, mask, scale: float):
        """Tile backward: ``(dq, dk, dv)`` like q, k, v."""
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            dout, q, k, v, out, lse, 0.0, kind == "causal", attn_mask=self._mask(mask, kind, q), scale=scale
        )


class FlexCuda(TorchTiled):
    """``flex_attention`` forward with a block mask (compiled on CUDA); backward from the torch kernel."""

    name = "flex"

    def __init__(self, compiled: bool = True):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        self._create_block_mask = create_block_mask
        self._flex = torch.compile(flex_attention, dynamic=True) if compiled else flex_attention

    @staticmethod
    def available() -> bool:
        try:
            import torch.nn.attention.flex_attention  # noqa: F401
        except ImportError:
            return False
        return torch.cuda.is_available()

    def forward(self, q, k, v, kind: str, mask, scale: float):
        """Tile forward: ``(out [B, h, n, d] like q, lse [B, h, n] fp32)``."""
        block_mask = None
        if kind != "full":
            dense = mask.to(q.device) if kind == "masked" else None
            mask_mod = (lambda b, h, i, j: j <= i) if kind == "causal" else (lambda b, h, i, j: dense[i, j])
            block_mask = self._create_block_mask(
                mask_mod, None, None, q.shape[2], k.shape[2], device=q.device
            )
        out, lse = self._flex(q, k, v, block_mask=block_mask, scale=scale, return_lse=True)
        return out, lse.float()


def select_backend(name: str, device: torch.device):
    """The backend object for ``name`` (``auto`` picks the fastest available on ``device``)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; expected one of {BACKENDS}")
    if name == "auto":
        if device.type == "cuda":
            name = "flex" if FlexCuda.available() else "torch"
        else:
            name = "sdpa_cpu" if SdpaCpu.available() else "torch"
    if name == "sdpa_cpu" and (device.type != "cpu" or not SdpaCpu.available()):
        raise RuntimeError(
            f"attention backend 'sdpa_cpu' needs CPU tensors and aten's CPU flash ops ({device})"
        )
    if name == "flex" and (device.type != "cuda" or not FlexCuda.available()):
        raise RuntimeError(
            f"attention backend 'flex' needs CUDA and torch.nn.attention.flex_attention ({device})"
        )
    return {"torch": TorchTiled, "sdpa_cpu": SdpaCpu, "flex": FlexCuda}[name]()


def _finite(lse: torch.Tensor) -> torch.Tensor:
    """``lse`` with -inf (rows that saw no key) replaced by 0, so exp(x - lse) stays 0 and not NaN."""
    return lse.masked_fill(lse == float("-inf"), 0.0)


def merge_partial(
    out: torch.Tensor, lse: torch.Tensor, part_out: torch.Tensor, part_lse: torch.Tensor
) -> None:
    """Fold a normalised partial result into ``out [.., n, d]`` and ``lse [.., n]`` (fp32) in place."""
    part_lse = part_lse.float()
    if bool(torch.isneginf(lse).all()):  # rows not seen yet: the part is the result
        out.copy_(part_out)
        lse.copy_(part_lse)
        return
    new_lse = torch.logaddexp(lse, part_lse)
    safe = _finite(new_lse)
    out.mul_(torch.exp(lse - safe)[..., None]).addcmul_(part_out, torch.exp(part_lse - safe)[..., None])
    lse.copy_(new_lse)
