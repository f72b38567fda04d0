"""Throughput arithmetic (model FLOPs of the masked attention, MFU peaks, memory) and readable numbers."""

from __future__ import annotations

import resource

import torch

# Dense bf16 tensor-core peaks per GPU (TFLOP/s, no sparsity), from NVIDIA's data sheets; the first name
# found in ``torch.cuda.get_device_name()`` wins, so variants come before their family.
BF16_PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("GH200", 989.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("H800", 989.0),
    ("A100", 312.0),
    ("A800", 312.0),
)


def dense_params_per_token(
    num_layers: int, hidden: int, ffn: int, heads: int, groups: int, vocab: int
) -> int:
    """Matmul parameters one token passes through (qkv, proj, SwiGLU MLP, output layer)."""
    head_dim = hidden // heads
    qkv = hidden * (hidden + 2 * groups * head_dim)
    layer = qkv + hidden * hidden + 3 * hidden * ffn
    return num_layers * layer + hidden * vocab


def step_flops(dense_params: int, tokens: int, pairs: int, num_layers: int, hidden: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one step: matmuls plus QK^T and AV."""
    return 6.0 * dense_params * tokens + 12.0 * num_layers * hidden * pairs


def peak_tflops(explicit: float | None, bf16: bool) -> tuple[float | None, str]:
    """The per-GPU peak MFU is measured against, and where it comes from (for the start-up summary).

    ``--peak-tflops`` when given; else the bf16 dense peak of a known GPU, for bf16 runs only (an fp32
    run against the bf16 peak would understate its MFU by the fp32/bf16 ratio).
    """
    if explicit is not None:
        return explicit, f"{explicit:g} TFLOP/s per GPU (--peak-tflops)"
    if not torch.cuda.is_available():
        return None, "not shown (no GPU; --peak-tflops sets a peak)"
    name = torch.cuda.get_device_name()
    for key, peak in BF16_PEAK_TFLOPS:
        if key in name:
            if not bf16:
                return None, f"not shown for an fp32 run ({name}'s table peak is bf16; use --peak-tflops)"
            return peak, f"{peak:g} TFLOP/s per GPU ({name}, bf16 dense)"
    return None, f"not shown ({name} is not in the peak table; use --peak-tflops)"


def peak_memory_gib() -> float:
    """Peak device memory (GPU) or peak resident memory of this process (CPU), GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def readable(value: float, digits: int = 3) -> str:
    """``12345 -> '12.3K'``, ``2.1e9 -> '2.1B'``: ``digits`` significant digits and a K/M/B/T suffix."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g}{suffix}"
    return f"{value:.{digits}g}"


def readable_duration(seconds: float) -> str:
    """``4000 -> '1h 06m'``, ``75 -> '1m 15s'``, ``3.2 -> '3.2s'``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
