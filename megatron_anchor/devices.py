"""Where tensors live: devices compared by what they mean, and host-to-device copies that do not block.

``torch.device("cuda") == torch.device("cuda:0")`` is False, yet every CUDA tensor reports an explicit index:
a device named without an index means the current device of its type, and is compared as such.
"""

from __future__ import annotations

import torch


def resolve_device(device: torch.device | str) -> torch.device:
    """``device`` with its index explicit: an accelerator named without one is its type's current device."""
    device = torch.device(device)
    if device.index is not None or device.type in ("cpu", "meta"):
        return device
    current = getattr(getattr(torch, device.type, None), "current_device", None)  # torch.cuda, torch.xpu, ...
    return torch.device(device.type, current() if current is not None else 0)


def same_device(a: torch.device | str, b: torch.device | str) -> bool:
    """Whether ``a`` and ``b`` are one device (type and resolved index; ``cpu`` is ``cpu:0``). Types first:
    resolving an index asks the device's runtime, which a CPU-only torch does not have."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    a, b = resolve_device(a), resolve_device(b)
    return (a.index or 0) == (b.index or 0)


def host_to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on ``device`` without making the host wait: pinned (CUDA) and ``non_blocking``.

    torch's caching host allocator keeps the pinned copy alive until the transfer has finished.
    """
    device = torch.device(device)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
