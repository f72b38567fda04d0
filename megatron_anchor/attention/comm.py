"""All CP communication of the attention: direct P2P K/V exchange, the anchor exchange, a safe start.

Step ``s`` of the ring pairs each rank with source ``rank - s`` and destination ``rank + s``. Every rank
sends only its own K/V (never forwards others'), so it sends exactly the rows its destination needs, and
nothing when none are needed: both ends know the sizes from the plan.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist

# Set to 1 to check on every call that doc_ids and the layout agree across CP ranks (two small all-reduces).
CHECK_ENV = "MEGATRON_ANCHOR_CHECK_DOC_IDS"
_STARTED: set[int] = set()  # id() of the CP groups whose first operation (a collective) was issued


class Pending:
    """In-flight P2P operations of one step; ``wait()`` exactly once before using the buffers."""

    def __init__(self, works: list, recv: torch.Tensor | None, ops: list):
        self._works = works
        self._ops = ops  # keeps the send buffers alive until wait()
        self._recv = recv
        self._done = False

    def wait(self) -> torch.Tensor | None:
        """Block until this step's messages completed; return the received buffer (None if nothing)."""
        if self._done:
            raise RuntimeError("Pending.wait() called twice on the same step")
        for work in self._works:
            work.wait()
        self._done, self._ops = True, []
        return self._recv


class CPComm:
    """Rank arithmetic and messaging for one CP group (``group=None``: a single rank, no messages)."""

    def __init__(self, group: dist.ProcessGroup | None, device: torch.device | None = None):
        self.group = group
        self.size = 1 if group is None else dist.get_world_size(group)
        self.rank = 0 if group is None else dist.get_rank(group)
        if self.size > 1 and id(group) not in _STARTED:
            # NCCL: a P2P operation as the first one on a group, not involving every rank, is undefined
            # behaviour (a rank with nothing to send skips it); a collective first makes the start safe.
            dist.all_reduce(torch.zeros(1, device=device), group=group)
            _STARTED.add(id(group))

    def peers(self, step: int) -> tuple[int, int]:
        """(source, destination) group ranks at ring ``step``."""
        return (self.rank - step) % self.size, (self.rank + step) % self.size

    def _global(self, group_rank: int) -> int:
        return dist.get_global_rank(self.group, group_rank)

    def exchange(
        self, step: int, send: torch.Tensor | None, recv_shape: tuple[int, ...] | None, like: torch.Tensor
    ) -> Pending:
        """Post step ``step``: send ``send`` to the destination, receive ``recv_shape`` from the source."""
        return self._post(step, send, recv_shape, like, tag=step)

    def reply(
        self, step: int, send: torch.Tensor | None, recv_shape: tuple[int, ...] | None, like
    ) -> Pending:
        """The reverse of ``exchange``: send back to step's source, receive from its destination."""
        return self._post(self.size - step, send, recv_shape, like, tag=self.size + step)

    def _post(self, step, send, recv_shape, like, tag: int) -> Pending:
        # Distinct tags keep a step's K/V and a reply between the same two ranks from being matched up.
        if not 0 < step < self.size:
            raise ValueError(f"ring step {step} outside 1..{self.size - 1}")
        src, dst = self.peers(step)
        ops, recv = [], None
        if send is not None and send.numel() > 0:
            ops.append(dist.P2POp(dist.isend, send.contiguous(), self._global(dst), self.group, tag))
        if recv_shape is not None and torch.Size(recv_shape).numel() > 0:
            recv = torch.empty(recv_shape, dtype=like.dtype, device=like.device)
            ops.append(dist.P2POp(dist.irecv, recv, self._global(src), self.group, tag))
        return Pending(dist.batch_isend_irecv(ops) if ops else [], recv, ops)

    def sum_anchor(self, parts: torch.Tensor, async_op: bool = False):
        """Sum ``[2, b, h_kv, d]`` fp32 over the group (only the owner of each sample's token 0 adds
        non-zeros, so the sum is its exact value); returns ``(tensor, work or None)``."""
        if self.size == 1:
            return parts, None
        work = dist.all_reduce(parts, group=self.group, async_op=async_op)
        return parts, work

    def check_same(self, *tensors: torch.Tensor | None) -> None:
        """Raise unless ``tensors`` (doc_ids, layout) match on every rank (only when ``CHECK_ENV=1``)."""
        if self.size == 1 or os.environ.get(CHECK_ENV, "0") != "1":
            return
        data = b"".join(t.cpu().numpy().tobytes() for t in tensors if t is not None)
        digest = hashlib.blake2b(data, digest_size=7).digest()
        value = torch.tensor([int.from_bytes(digest, "little")], dtype=torch.int64)
        if self.group is not None and dist.get_backend(self.group) == "nccl":
            value = value.cuda()
        low, high = value.clone(), value.clone()
        dist.all_reduce(low, dist.ReduceOp.MIN, group=self.group)
        dist.all_reduce(high, dist.ReduceOp.MAX, group=self.group)
        if low.item() != high.item():
            raise ValueError(f"doc_ids or cp_index differ across CP ranks (this is CP rank {self.rank})")
