"""Apply RoPE in fp32 with angles computed in fp64 and reduced modulo 2*pi (SPEC section 3).

Two backends do the rotation: Transformer Engine's fused kernel (fp32 ``freqs`` holding the reduced angles;
on CUDA when TE imports) and a torch fp32 path (anywhere). ``backend=`` or the environment variable
``MEGATRON_ANCHOR_ROPE_BACKEND`` (``auto``, ``torch``, ``te``) picks one; ``auto`` uses TE when it can.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable

import torch

from megatron_anchor.binding import BindError, Binding, python_parameters

BACKENDS = ("auto", "torch", "te")
BACKEND_ENV = "MEGATRON_ANCHOR_ROPE_BACKEND"


def rotary_angles(positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """fp32 angles ``[..., d_rot/2]`` = ``(pos * inv_freq) mod 2*pi``, the product taken in fp64."""
    angles = positions.to(torch.float64)[..., None] * inv_freq.to(torch.float64)
    return torch.remainder(angles, 2 * math.pi).to(torch.float32)


def rotate_fp32(
    t: torch.Tensor, angles: torch.Tensor, mscale: float = 1.0, interleaved: bool = False
) -> torch.Tensor:
    """Rotate the first ``2*angles.shape[-1]`` channels of ``t [s, b, h, d]`` by fp32 ``angles``.

    ``angles`` is ``[s, d_rot/2]`` or ``[b, s, d_rot/2]``; cos/sin and the rotation are fp32, the result is
    cast back to ``t.dtype``; channels past ``d_rot`` pass through unchanged.
    """
    half = angles.shape[-1]
    # [s, n] -> [s, 1, 1, n]; [b, s, n] -> [s, b, 1, n]
    angles = angles[:, None, None] if angles.dim() == 2 else angles.transpose(0, 1)[:, :, None]
    cos, sin = angles.float().cos() * mscale, angles.float().sin() * mscale
    x = t[..., : 2 * half].float()  # [s, b, h, d_rot] fp32
    if interleaved:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    else:
        x1, x2 = x[..., :half], x[..., half:]
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    out = out.to(t.dtype)
    if 2 * half == t.shape[-1]:
        return out
    return torch.cat([out, t[..., 2 * half :]], dim=-1)


@functools.lru_cache(maxsize=1)
def _te_apply() -> tuple[Callable | None, str]:
    """Transformer Engine's ``apply_rotary_pos_emb`` and '' when importable, else None and the reason."""
    try:
        try:
            from transformer_engine.pytorch.attention.rope import apply_rotary_pos_emb
        except ImportError:  # TE 2.2 and older: transformer_engine/pytorch/attention.py defines or imports it
            from transformer_engine.pytorch.attention import apply_rotary_pos_emb
    except Exception as err:  # a broken TE install raises more than ImportError (missing CUDA libraries)
        return None, f"transformer_engine does not import: {type(err).__name__}: {err}"
    return apply_rotary_pos_emb, ""


# Each of TE's parameters set explicitly. cp_size=1: the angles are this rank's own tokens' (any CP layout);
# with cp_size > 1 TE would assume megatron-core's chunk layout. No offsets (start_positions), no packing.
_TE_FIXED = {"tensor_format": "sbhd", "fused": True, "cu_seqlens": None, "cp_size": 1, "cp_rank": 0,
             "start_positions": None}  # fmt: skip


@functools.lru_cache(maxsize=4)
def _te_binding(fn: Callable) -> Binding:
    """How ``fn`` (TE's ``apply_rotary_pos_emb``) is called; ``BindError`` if a parameter is not set here."""
    per_call, required = ("t", "freqs", "interleaved"), {"angles": ("freqs",)}
    return Binding("TE apply_rotary_pos_emb", python_parameters(fn), _TE_FIXED, per_call, required)


def te_rope_available(device: torch.device | str | None = None) -> tuple[bool, str]:
    """Whether TE's fused RoPE can run on ``device`` (CUDA), and if not, why."""
    if device is not None and torch.device(device).type != "cuda":
        return False, f"tensors are on {torch.device(device).type}, TE's fused RoPE needs CUDA"
    if not torch.cuda.is_available():
        return False, "CUDA is not available"
    fn, reason = _te_apply()
    if fn is None:
        return False, reason
    try:
        _te_binding(fn)
    except BindError as err:
        return False, str(err)
    return True, ""


def te_takes_interleaved() -> bool:
    """Whether the installed TE's ``apply_rotary_pos_emb`` has ``interleaved`` (TE 2.3 and newer)."""
    fn, _ = _te_apply()
    try:
        return fn is not None and "interleaved" in _te_binding(fn).per_call
    except BindError:
        return False


def resolve_backend(t: torch.Tensor, backend: str | None = None, interleaved: bool = False) -> str:
    """``torch`` or ``te`` for tensor ``t`` from ``backend`` / ``$MEGATRON_ANCHOR_ROPE_BACKEND`` / auto.

    TE before 2.3 rotates halves only: interleaved layouts take the torch path there.
    """
    choice = backend or os.environ.get(BACKEND_ENV) or "auto"
    if choice not in BACKENDS:
        raise ValueError(f"RoPE backend {choice!r} (argument or ${BACKEND_ENV}) is not one of {BACKENDS}")
    ok, reason = te_rope_available(t.device)
    if ok and interleaved and not te_takes_interleaved():
        ok, reason = False, "this Transformer Engine's apply_rotary_pos_emb has no 'interleaved' (TE < 2.3)"
    if choice == "te" and not ok:
        raise RuntimeError(f"RoPE backend 'te' requested but unavailable: {reason}")
    if choice == "auto":
        return "te" if ok else "torch"
    return choice


def _te_rotate(t: torch.Tensor, angles: torch.Tensor, mscale: float, interleaved: bool) -> torch.Tensor:
    """TE fused kernel over one batch of ``t [s, b, h, d]`` sharing ``angles [s, d_rot/2]`` (fp32)."""
    apply, _ = _te_apply()
    # TE's freqs layout per channel: [a, a] halves, or each angle twice in a row when interleaved.
    freqs = angles.repeat_interleave(2, dim=-1) if interleaved else torch.cat([angles, angles], dim=-1)
    freqs = freqs[:, None, None, :].contiguous()  # [s, 1, 1, d_rot] fp32
    binding = _te_binding(apply)
    if interleaved and "interleaved" not in binding.per_call:
        raise RuntimeError("this Transformer Engine's apply_rotary_pos_emb has no 'interleaved' (TE < 2.3)")
    if mscale == 1.0:
        return apply(**binding.kwargs(t=t, freqs=freqs, interleaved=interleaved))
    # The kernel has no mscale: scale the rotary channels in fp32 first so the result is still cast once.
    d_rot = freqs.shape[-1]
    scaled = torch.cat([t[..., :d_rot].float() * mscale, t[..., d_rot:].float()], dim=-1)
    return apply(**binding.kwargs(t=scaled, freqs=freqs, interleaved=interleaved)).to(t.dtype)


def _check_shapes(t: torch.Tensor, positions: torch.Tensor, n_pairs: int) -> None:
    if t.dim() != 4:
        raise ValueError(f"RoPE expects t as [s, b, h, d], got shape {tuple(t.shape)}")
    s, b = t.shape[0], t.shape[1]
    if positions.shape not in ((s,), (b, s)):
        raise ValueError(f"positions must be [s]={s} or [b, s]=[{b}, {s}], got {tuple(positions.shape)}")
    if 2 * n_pairs > t.shape[-1]:
        raise ValueError(f"rotary dim {2 * n_pairs} exceeds the head dim {t.shape[-1]}")


def apply_rotary_angles(
    t: torch.Tensor,
    angles: torch.Tensor,
    mscale: float = 1.0,
    *,
    interleaved: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Rotate ``t [s, b, h, d]`` by fp32 ``angles [s | b, s, d_rot/2]`` (from ``rotary_angles``).

    Lets a model build the angle table once per step and reuse it for q and k of every layer.
    """
    _check_shapes(t, angles[..., 0], angles.shape[-1])
    if angles.dtype != torch.float32:
        raise ValueError(f"angles must be fp32 (reduced modulo 2*pi by rotary_angles), got {angles.dtype}")
    angles = angles.to(t.device)
    if resolve_backend(t, backend, interleaved) == "torch":
        return rotate_fp32(t, angles, mscale, interleaved)
    if angles.dim() == 2 or angles.shape[0] == 1:
        return _te_rotate(t, angles if angles.dim() == 2 else angles[0], mscale, interleaved)
    # TE's freqs are shared by the batch: a batch of several samples takes one call per sample (comparing
    # the samples' positions here would read the device).
    return torch.cat(
        [_te_rotate(t[:, i : i + 1], angles[i], mscale, interleaved) for i in range(t.shape[1])], dim=1
    )


def apply_rotary_fp32(
    t: torch.Tensor,
    positions: torch.Tensor,
    inv_freq: torch.Tensor,
    mscale: float = 1.0,
    *,
    interleaved: bool = False,
    backend: str | None = None,
) -> torch.Tensor:
    """Rotate ``t [s, b, h, d]`` at int ``positions [s]`` or ``[b, s]``; returns a tensor like ``t``.

    ``inv_freq [d_rot/2]`` (fp64 from ``compute_inv_freq``); channels past ``d_rot`` pass through (partial
    rotary). Angles are exact (fp64, mod 2*pi), cos/sin times ``mscale`` and the rotation are fp32.
    """
    _check_shapes(t, positions, inv_freq.shape[-1])
    angles = rotary_angles(positions.to(t.device), inv_freq.to(t.device))  # [s | b, s, d_rot/2] fp32
    return apply_rotary_angles(t, angles, mscale, interleaved=interleaved, backend=backend)
