"""apply_rotary_fp32 against an independent fp64 complex-number rotation, bf16 casts, CP slicing, backends."""

from __future__ import annotations

import functools

import pytest
import torch

from megatron_anchor.data import position_ids_from_doc_ids
from megatron_anchor.parallel import batch_cp_index, shard_for_cp
from megatron_anchor.rope import (
    BACKEND_ENV,
    RopeScaling,
    apply_rotary_angles,
    apply_rotary_fp32,
    compute_inv_freq,
    resolve_backend,
    rotary_angles,
    rotate_fp32,
)


def reference_rope(
    t: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, mscale: float = 1.0,
    interleaved: bool = False,
) -> torch.Tensor:
    """fp64 RoPE as complex multiplication: pair k is (x_k, x_{k+n}) or (x_2k, x_2k+1); returns fp64."""
    x = t.double()
    n = inv_freq.shape[0]
    if interleaved:
        re, im = x[..., 0 : 2 * n : 2], x[..., 1 : 2 * n : 2]
    else:
        re, im = x[..., :n], x[..., n : 2 * n]
    angles = positions.double()[..., None] * inv_freq.double()  # [s, n] or [b, s, n]
    angles = angles[:, None, None] if angles.dim() == 2 else angles.transpose(0, 1)[:, :, None]
    z = torch.complex(re, im) * torch.polar(torch.full_like(angles, mscale), angles)
    if interleaved:
        rotated = torch.stack([z.real, z.imag], dim=-1).flatten(-2)
    else:
        rotated = torch.cat([z.real, z.imag], dim=-1)
    return torch.cat([rotated, x[..., 2 * n :]], dim=-1)


def sample(s: int = 64, b: int = 2, h: int = 3, d: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(s, b, h, d, generator=gen) * 2 - 1  # |x| <= 1


def far_positions(s: int, seed: int = 1) -> torch.Tensor:
    """Positions spread over [0, 1M], including both ends."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 1 << 20, (s,), generator=gen)
    pos[0], pos[-1] = 0, (1 << 20) - 1
    return pos


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("d, rotary_dim", [(64, 64), (64, 32), (80, 48)])
def test_fp32_matches_fp64_reference_to_1m(interleaved: bool, d: int, rotary_dim: int) -> None:
    t = sample(d=d)
    positions = far_positions(t.shape[0])
    inv_freq, _ = compute_inv_freq(500000.0, rotary_dim)
    out = apply_rotary_fp32(t, positions, inv_freq, interleaved=interleaved)
    assert out.dtype == torch.float32 and out.shape == t.shape
    ref = reference_rope(t, positions, inv_freq, interleaved=interleaved)
    assert (out.double() - ref).abs().max() < 1e-6
    assert torch.equal(out[..., rotary_dim:], t[..., rotary_dim:])  # pass-through channels untouched


def test_batch_positions_and_mscale() -> None:
    t = sample()
    positions = torch.stack([far_positions(t.shape[0], seed) for seed in (2, 3)])  # [b, s]
    scaling = RopeScaling("yarn", factor=16.0, original_max_position_embeddings=4096)
    inv_freq, mscale = compute_inv_freq(10000.0, 64, scaling)
    out = apply_rotary_fp32(t, positions, inv_freq, mscale)
    ref = reference_rope(t, positions, inv_freq, mscale)
    assert mscale > 1 and (out.double() - ref).abs().max() < 1e-6 * mscale


def test_plain_fp32_angles_miss_the_same_bound() -> None:
    """The bound above is meaningful: fp32 products ``pos * inv_freq`` miss it by orders of magnitude."""
    t = sample()
    positions = far_positions(t.shape[0])
    inv_freq, _ = compute_inv_freq(500000.0, 64)
    plain = rotate_fp32(t, positions.float()[:, None] * inv_freq.float())
    assert (plain.double() - reference_rope(t, positions, inv_freq)).abs().max() > 1e-3


def bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """One bf16 unit in the last place at each value of ``x`` (fp64)."""
    _, exponent = torch.frexp(x.double().abs().clamp(min=1e-30))
    return torch.ldexp(torch.ones_like(x, dtype=torch.float64), exponent - 8)


@pytest.mark.parametrize("interleaved", [False, True])
def test_bf16_differs_from_fp64_only_by_the_final_cast(interleaved: bool) -> None:
    t = sample(s=128).to(torch.bfloat16)
    positions = far_positions(t.shape[0])
    inv_freq, _ = compute_inv_freq(10000.0, 48)
    out = apply_rotary_fp32(t, positions, inv_freq, interleaved=interleaved)
    assert out.dtype == torch.bfloat16
    exact = reference_rope(t, positions, inv_freq, interleaved=interleaved)  # fp64 of the bf16 inputs
    cast = exact.to(torch.bfloat16)
    diff = (out.double() - cast.double()).abs()
    assert (diff <= bf16_ulp(exact)).all()  # at most one bf16 ulp, only where fp64 sits near a tie
    assert (diff == 0).double().mean() > 0.99


@pytest.mark.parametrize("mode", ["global", "reset"])
@pytest.mark.parametrize("cp", [2, 4])
def test_cp_sliced_positions_match_full_sample(mode: str, cp: int) -> None:
    lengths = [[1, 5, 17, 9, 32], [1, 39, 24]]  # anchor, then documents; S = 64 per sample
    doc_ids = torch.stack([torch.repeat_interleave(torch.arange(len(x)), torch.tensor(x)) for x in lengths])
    positions = position_ids_from_doc_ids(doc_ids, mode) + 200_000  # [b, S], far from 0
    t = sample(s=64)
    inv_freq, _ = compute_inv_freq(10000.0, 64)
    full = apply_rotary_fp32(t, positions, inv_freq)
    for layout in ("megatron", "balanced"):
        index = batch_cp_index(doc_ids, cp, layout)  # [b, cp, S / cp]
        for rank in range(cp):
            local_t = shard_for_cp(t, index, rank, seq_dim=0)
            local_pos = shard_for_cp(positions, index, rank)
            local = apply_rotary_fp32(local_t, local_pos, inv_freq)
            expected = shard_for_cp(full, index, rank, seq_dim=0)
            torch.testing.assert_close(local, expected, rtol=0, atol=1e-6)


def test_gradient_is_the_inverse_rotation() -> None:
    t = sample(s=16).requires_grad_()
    positions = far_positions(16)
    inv_freq, _ = compute_inv_freq(10000.0, 64)
    grad_out = sample(s=16, seed=5)
    apply_rotary_fp32(t, positions, inv_freq).backward(grad_out)
    expected = reference_rope(grad_out, positions, -inv_freq)  # R(-angle) = R(angle)^T
    assert (t.grad.double() - expected).abs().max() < 1e-6


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    t = sample(s=4)
    assert resolve_backend(t, "torch") == "torch"
    if not torch.cuda.is_available():
        assert resolve_backend(t) == "torch"
        with pytest.raises(RuntimeError, match="'te' requested but unavailable: tensors are on cpu"):
            apply_rotary_fp32(t, torch.arange(4), compute_inv_freq(10000.0, 64)[0], backend="te")
    monkeypatch.setenv(BACKEND_ENV, "cuda-magic")
    with pytest.raises(ValueError, match="MEGATRON_ANCHOR_ROPE_BACKEND"):
        resolve_backend(t)


def test_shape_errors() -> None:
    t = sample(s=8, d=16)
    inv_freq, _ = compute_inv_freq(10000.0, 16)
    with pytest.raises(ValueError, match="positions must be"):
        apply_rotary_fp32(t, torch.arange(7), inv_freq)
    with pytest.raises(ValueError, match="exceeds the head dim"):
        apply_rotary_fp32(t, torch.arange(8), compute_inv_freq(10000.0, 32)[0])


def test_precomputed_angles_equal_positions_path() -> None:
    t = sample()
    positions = far_positions(t.shape[0])
    inv_freq, _ = compute_inv_freq(10000.0, 32)
    angles = rotary_angles(positions, inv_freq)
    assert torch.equal(apply_rotary_angles(t, angles, 1.5), apply_rotary_fp32(t, positions, inv_freq, 1.5))
    with pytest.raises(ValueError, match="angles must be fp32"):
        apply_rotary_angles(t, angles.double())


def emulated_te_kernel(t, freqs, tensor_format="sbhd", interleaved=False, fused=False):
    """TE's fused RoPE contract (freqs [s, 1, 1, d2] fp32, fp32 math, cast to t's dtype), run on CPU."""
    assert fused and tensor_format == "sbhd" and freqs.dtype == torch.float32 and freqs.shape[1:3] == (1, 1)
    d2 = freqs.shape[-1]
    x = t[..., :d2].float()
    if interleaved:
        rotated = torch.stack([-x[..., 1::2], x[..., 0::2]], dim=-1).flatten(-2)
    else:
        rotated = torch.cat([-x[..., d2 // 2 :], x[..., : d2 // 2]], dim=-1)
    out = x * freqs.cos() + rotated * freqs.sin()
    return torch.cat([out.to(t.dtype), t[..., d2:]], dim=-1)


def emulated_te22_kernel(t, freqs, tensor_format="sbhd", fused=False, cu_seqlens=None, cp_size=1, cp_rank=0):
    """TE 1.10-2.2's signature: no ``interleaved`` (halves only)."""
    return emulated_te_kernel(t, freqs, tensor_format=tensor_format, fused=fused)


@pytest.mark.parametrize("interleaved", [False, True])
def test_te_without_interleaved_takes_the_torch_path_for_interleaved(monkeypatch, interleaved: bool) -> None:
    """TE 2.2 (NGC 25.04) has no ``interleaved=``: halves go to TE, interleaved layouts to the torch path."""
    import megatron_anchor.rope.apply as apply_module

    calls = []

    @functools.wraps(emulated_te22_kernel)  # the binder reads the wrapped signature
    def kernel(*args, **kwargs):
        calls.append(1)
        return emulated_te22_kernel(*args, **kwargs)

    monkeypatch.setattr(apply_module, "_te_apply", lambda: (kernel, ""))
    monkeypatch.setattr(apply_module, "te_rope_available", lambda device=None: (True, ""))
    t = sample(d=64)
    positions = far_positions(t.shape[0])
    inv_freq, _ = compute_inv_freq(10000.0, 64)
    out = apply_rotary_fp32(t, positions, inv_freq, interleaved=interleaved)
    ref = reference_rope(t, positions, inv_freq, 1.0, interleaved=interleaved)
    assert (out.double() - ref).abs().max() < 2e-6 and len(calls) == (0 if interleaved else 1)
    if interleaved:
        with pytest.raises(RuntimeError, match="no 'interleaved'"):
            apply_rotary_fp32(t, positions, inv_freq, interleaved=True, backend="te")


@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("batch_positions", [False, True])
def test_te_backend_wiring(monkeypatch: pytest.MonkeyPatch, interleaved: bool, batch_positions: bool) -> None:
    """freqs layout, mscale and per-sample positions handed to TE (kernel emulated where TE is absent)."""
    import megatron_anchor.rope.apply as apply_module

    if not apply_module.te_rope_available("cuda")[0]:
        monkeypatch.setattr(apply_module, "_te_apply", lambda: (emulated_te_kernel, ""))
        monkeypatch.setattr(apply_module, "te_rope_available", lambda device=None: (True, ""))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t = sample(d=80).to(device)
    positions = far_positions(t.shape[0])
    if batch_positions:
        positions = torch.stack([positions, far_positions(t.shape[0], seed=7)])
    inv_freq, _ = compute_inv_freq(10000.0, 48)
    for mscale in (1.0, 1.3):
        out = apply_rotary_fp32(t, positions, inv_freq, mscale, interleaved=interleaved, backend="te")
        ref = reference_rope(t.cpu(), positions, inv_freq, mscale, interleaved=interleaved)
        assert out.dtype == t.dtype and (out.cpu().double() - ref).abs().max() < 2e-6


def test_never_asks_cuda_for_a_device_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """megatron-core's RotaryEmbedding calls torch.cuda.current_device(); nothing here may, on CPU."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.cuda.current_device() called on a CPU run")

    monkeypatch.setattr(torch.cuda, "current_device", refuse)
    t = sample(s=8).to(torch.bfloat16)
    inv_freq, mscale = compute_inv_freq(10000.0, 64, RopeScaling("yarn", 4.0, 4096))
    out = apply_rotary_fp32(t, torch.arange(8) + 70_000, inv_freq, mscale, interleaved=True)
    assert out.dtype == torch.bfloat16 and out.device.type == "cpu"
