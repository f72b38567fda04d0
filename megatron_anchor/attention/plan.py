"""The attention plan of one micro-batch: every index tensor and kernel call derived from doc_ids and layout.

Built once per micro-batch on the host (``AnchorLayout`` caches it) and reused by every layer, by backward
and by recompute; once it exists the attention reads nothing back from the device. Tokens are *packed*
sample-major in local order: row ``b * L + p`` is sample ``b``'s ``p``-th local token (ascending global
index). Ring step 0 is exactly one causal variable-length call over all local rows (a sequence per
document), which starts the result;
step ``k`` receives from rank ``rank - k`` only the K/V rows some local query needs and makes one full
call per level (see ``geometry``). The anchor is not a kernel key: it is folded in in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch

from megatron_anchor.attention.geometry import SampleGeometry, concat_ranges
from megatron_anchor.devices import host_to_device
from megatron_anchor.parallel.cp_layout import megatron_cp_index, ring_cp_index
from megatron_anchor.parallel.layout_names import check_mode
from megatron_anchor.parallel.work import check_doc_ids


@dataclass
class AttentionStats:
    """Work counters of one or more calls (per rank; sum over ranks for the whole sample)."""

    visible: int = 0  # visible (query, key) pairs the kernels cover, anchor excluded
    anchor_rows: int = 0  # query rows that fold the anchor in (closed form, no kernel)
    sequences: int = 0  # variable-length sequences over all kernel calls
    calls: int = 0  # kernel calls of one forward (a backward makes as many)
    rows_sent: int = 0  # K/V rows sent to other ranks
    idle_steps: int = 0  # ring steps after the first with nothing to receive or compute
    kernel_calls_forward: int = 0  # backend kernel invocations, counted as they run
    kernel_calls_backward: int = 0

    def add(self, other: AttentionStats) -> None:
        """Accumulate ``other`` into this object."""
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


Rows = slice | torch.Tensor  # a contiguous range of rows (a view), or an index tensor (a gather)


@dataclass(eq=False)
class KernelCall:
    """One variable-length attention call over gathered query rows and key rows."""

    causal: bool  # causal within each sequence (bottom-right aligned), else every key visible
    q_rows: Rows  # packed local query rows, in sequence order
    k_rows: Rows  # rows of the step's key buffer, in sequence order
    cu_q: torch.Tensor  # [n + 1] int32 on the device, offsets into the gathered query rows
    cu_k: torch.Tensor  # [n + 1] int32 on the device
    host_cu_q: np.ndarray  # the same offsets on the host (CPU kernels loop over sequences)
    host_cu_k: np.ndarray
    max_q: int
    max_k: int
    visible: int
    cache: dict = field(default_factory=dict)  # backend-derived data, built once, reused by every layer

    @property
    def sequences(self) -> int:
        """Number of variable-length sequences."""
        return len(self.host_cu_q) - 1


@dataclass(eq=False)
class RingStep:
    """One ring step seen from this rank: what it sends, what it receives, which calls it makes."""

    src: int
    dst: int
    send_rows: torch.Tensor | None  # packed local rows sent to ``dst`` (None: nothing)
    recv_rows: int  # rows arriving from ``src`` (0: nothing)
    calls: list[KernelCall]


@dataclass(eq=False)
class AnchorFold:
    """The anchor as one extra key of the rows outside its document, in closed form."""

    token0_rows: torch.Tensor  # [b] packed row of token 0 where this rank holds it, else 0
    owned: torch.Tensor  # [b] fp32 1.0 where this rank holds token 0, else 0.0
    rows: torch.Tensor  # [T] bool: rows that fold the anchor in


@dataclass(eq=False)
class AttentionPlan:
    """Everything one rank computes and sends for one micro-batch."""

    mode: str
    cp_size: int  # ranks of the ring (P); the CP size is a2a_size * cp_size
    rank: int  # this rank's place in the ring
    batch: int
    local_len: int  # rows per sample after the all-to-all (a2a_size x the CP rank's tokens)
    device: torch.device
    order: torch.Tensor | None  # [T] input row of each packed row (None: the input is in local order)
    inverse: torch.Tensor | None  # [T] packed row of each input row
    steps: list[RingStep]
    anchor: AnchorFold | None
    stats: AttentionStats
    a2a_size: int = 1  # degree of the all-to-all before the ring (A; 1: none, --cp-comm-type p2p)


def _to_device(array: np.ndarray, device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    # once per micro-batch, off the hot path: pinned and asynchronous
    return host_to_device(torch.from_numpy(np.ascontiguousarray(array)).to(dtype), device)


def _rows(starts: np.ndarray, lengths: np.ndarray, device: torch.device) -> Rows:
    """Rows of consecutive ranges: a slice when they are back to back, else an index tensor."""
    if len(starts) == 0 or np.array_equal(starts[1:], (starts + lengths)[:-1]):
        first = int(starts[0]) if len(starts) else 0
        return slice(first, first + int(lengths.sum()))
    return _to_device(concat_ranges(starts, lengths), device)


def kernel_call(causal: bool, q: tuple, k: tuple, device: torch.device) -> KernelCall:
    """A call from ``(starts, lengths)`` numpy arrays of its sequences' query rows and key rows."""
    (q_start, q_len), (k_start, k_len) = q, k
    cu_q = np.concatenate([[0], np.cumsum(q_len)]).astype(np.int64)
    cu_k = np.concatenate([[0], np.cumsum(k_len)]).astype(np.int64)
    visible = int((q_len * (q_len + 1) // 2).sum()) if causal else int((q_len * k_len).sum())
    return KernelCall(
        causal=causal,
        q_rows=_rows(q_start, q_len, device),
        k_rows=_rows(k_start, k_len, device),
        cu_q=_to_device(cu_q, device, torch.int32),
        cu_k=_to_device(cu_k, device, torch.int32),
        host_cu_q=cu_q,
        host_cu_k=cu_k,
        max_q=int(q_len.max()),
        max_k=int(k_len.max()),
        visible=visible,
    )


def _local_call(geoms: list[SampleGeometry], rank: int, device: torch.device) -> KernelCall:
    """Step 0: the local rows against themselves, one causal sequence per (sample, document)."""
    starts, lengths = [], []
    for b, geom in enumerate(geoms):
        cu = geom.local_docs(rank)
        starts.append(cu[:-1] + b * geom.local_len)
        lengths.append(np.diff(cu))
    q = (np.concatenate(starts), np.concatenate(lengths))
    return kernel_call(True, q, q, device)


def _remote_step(geoms: list[SampleGeometry], rank: int, step: int, device: torch.device) -> RingStep:
    """Step ``step``: rows sent to ``rank + step``, and one full call per level on ``rank - step``'s rows."""
    cp = geoms[0].cp
    src, dst = (rank - step) % cp, (rank + step) % cp
    received = [geom.received(rank, src) for geom in geoms]
    local_len = geoms[0].local_len
    sent = np.concatenate([g.sent_rows(rank, dst) + b * local_len for b, g in enumerate(geoms)])
    buffer_offset = np.concatenate([[0], np.cumsum([r.rows for r in received])])
    calls = []
    for level in range(max((int(r.level.max()) + 1 for r in received if len(r.level)), default=0)):
        parts = [
            (r.q_start[m] + b * local_len, r.q_len[m], r.key_start[m] + buffer_offset[b], r.key_len[m])
            for b, r in enumerate(received)
            for m in [r.level == level]
        ]
        q_start, q_len, k_start, k_len = (np.concatenate(column) for column in zip(*parts))
        calls.append(kernel_call(False, (q_start, q_len), (k_start, k_len), device))
    send_rows = _to_device(sent, device) if len(sent) else None
    return RingStep(src, dst, send_rows, int(buffer_offset[-1]), calls)


def _anchor_fold(geoms: list[SampleGeometry], rank: int, device: torch.device) -> AnchorFold:
    owned = np.array([g.owner_of_token0 == rank for g in geoms])
    token0 = np.array([b * g.local_len + g.pos_of_token0 for b, g in enumerate(geoms)]) * owned
    rows = np.concatenate([g.anchor_rows(rank) for g in geoms])
    return AnchorFold(
        token0_rows=_to_device(token0, device),
        owned=_to_device(owned, device, torch.float32),
        rows=_to_device(rows, device, torch.bool),
    )


def check_cp_index(cp_index: torch.Tensor, batch: int, seq_len: int, cp_size: int) -> None:
    """Raise unless ``cp_index [b, cp, S / cp]`` int64 cuts every sample into equal parts, each token once."""
    expected = (batch, cp_size, seq_len // cp_size)
    if cp_index.dtype != torch.int64 or tuple(cp_index.shape) != expected or seq_len % cp_size:
        raise ValueError(
            f"cp_index must be int64 {list(expected)} (S={seq_len} split over CP {cp_size}); "
            f"got {cp_index.dtype} {list(cp_index.shape)}"
        )
    flat = cp_index.reshape(batch, seq_len)
    if not torch.equal(flat.sort(dim=1).values, torch.arange(seq_len).expand(batch, seq_len)):
        raise ValueError("cp_index must hold every token index 0..S-1 of each sample exactly once")


def _input_order(cp_index: torch.Tensor, rank: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Packed input row of each packed local-order row, and its inverse (None when already sorted)."""
    mine = cp_index[:, rank].numpy()  # [b, L]
    if (np.diff(mine, axis=1) > 0).all():
        return None
    local_len = mine.shape[1]
    order = (np.argsort(mine, axis=1, kind="stable") + np.arange(len(mine))[:, None] * local_len).ravel()
    return order, np.argsort(order)


def build_attention_plan(
    doc_ids: torch.Tensor,
    mode: str = "anchor",
    *,
    cp_size: int = 1,
    rank: int = 0,
    cp_index: torch.Tensor | None = None,
    device: torch.device | str | None = None,
    a2a_size: int = 1,
) -> AttentionPlan:
    """The plan of ring ``rank`` (of ``cp_size``) for ``doc_ids [b, S]`` (host tensor) under ``cp_index``.

    ``cp_index [b, a2a_size * cp_size, S / (a2a_size * cp_size)]`` is every CP rank's tokens (None:
    megatron-core's layout). With an all-to-all of degree ``a2a_size`` (A) first, ring rank ``p`` holds
    the tokens of CP ranks ``p*A .. p*A + A - 1`` (``ring_cp_index``). Index tensors go to ``device``.
    """
    check_mode(mode)
    doc_ids = doc_ids.cpu()  # callers pass the host copy; a device tensor costs one read per micro-batch
    check_doc_ids(doc_ids)
    batch, seq_len = doc_ids.shape
    if cp_index is None:
        cp_index = megatron_cp_index(seq_len, a2a_size * cp_size, batch)
    cp_index = cp_index.cpu()
    check_cp_index(cp_index, batch, seq_len, a2a_size * cp_size)
    cp_index = ring_cp_index(cp_index, a2a_size)
    device = torch.device(device or "cpu")
    geoms = [SampleGeometry(doc_ids[b].numpy(), cp_index[b].numpy(), mode) for b in range(batch)]
    steps = [RingStep(rank, rank, None, 0, [_local_call(geoms, rank, device)])]
    steps += [_remote_step(geoms, rank, step, device) for step in range(1, cp_size)]
    anchor = _anchor_fold(geoms, rank, device) if mode == "anchor" else None
    order = _input_order(cp_index, rank)
    stats = AttentionStats(
        visible=sum(c.visible for s in steps for c in s.calls),
        anchor_rows=sum(int(g.anchor_rows(rank).sum()) for g in geoms),
        sequences=sum(c.sequences for s in steps for c in s.calls),
        calls=sum(len(s.calls) for s in steps),
        rows_sent=sum(0 if s.send_rows is None else len(s.send_rows) for s in steps),
        idle_steps=sum(not s.calls and s.send_rows is None for s in steps[1:]),
    )
    return AttentionPlan(
        mode=mode,
        cp_size=cp_size,
        rank=rank,
        batch=batch,
        local_len=seq_len // cp_size,
        device=device,
        order=None if order is None else _to_device(order[0], device),
        inverse=None if order is None else _to_device(order[1], device),
        steps=steps,
        anchor=anchor,
        stats=stats,
        a2a_size=a2a_size,
    )
