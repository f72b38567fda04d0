"""Dispatch-level recorders for the hot-path tests: host reads, copies between devices, their blocking."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read a tensor's values back to the host (a device sync on a GPU).
HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "masked_select", "unique_dim",
              "_unique2", "unique_consecutive"}  # fmt: skip

Pick = Callable[[str, tuple, dict, Any], Any]


class RecordOps(TorchDispatchMode):
    """Runs every op and keeps in ``seen`` what ``pick(name, args, kwargs, out)`` returns (None: nothing)."""

    def __init__(self, pick: Pick):
        super().__init__()
        self.pick, self.seen = pick, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        found = self.pick(func.overloadpacket.__name__, args, kwargs, out)
        if found is not None:
            self.seen.append(found)
        return out


def _devices(args: tuple, kwargs: dict, out: Any) -> set[torch.device]:
    outs = out if isinstance(out, (list, tuple)) else [out]
    return {t.device for t in (*args, *kwargs.values(), *outs) if isinstance(t, torch.Tensor)}


def host_read(name: str, args: tuple, kwargs: dict, out: Any) -> str | None:
    """The op's name if it reads values back to the host or spans several devices."""
    return name if name in HOST_READS or len(_devices(args, kwargs, out)) > 1 else None


def device_copy(name: str, args: tuple, kwargs: dict, out: Any) -> str | None:
    """The op's name if its tensors lie on several device types (a copy between host and device)."""
    return name if len({d.type for d in _devices(args, kwargs, out)}) > 1 else None


def host_copy_blocking(name: str, args: tuple, kwargs: dict, out: Any) -> bool | None:
    """``non_blocking`` of a copy from the host to another device."""
    if name == "_to_copy" and args[0].device.type == "cpu" != out.device.type:
        return kwargs.get("non_blocking", False)
    return None
