"""The BF16 RoPE deviation diagnostic (AnchorAttention paper, section 3) on the model itself.

Shifting every position by delta changes nothing in exact arithmetic. The model is run on the same sequences
at positions ``delta + i`` for several deltas in one batch (group 0 at the reference delta), and every
layer's attention probabilities are compared with the reference group's as they are computed:

- ``D = sum over layers, heads, rows i of (1/(i+1)) sum_j |A_ij(delta) - A_ij(ref)|``;
- ``D_first = (1/T) sum over layers, heads, rows |A_i0(delta) - A_i0(ref)|`` (the first token's column);
- ``first_share``: the part of ``D`` that comes from column 0, over ``D``.

Values are means over the batch's sequences. Three numeric paths: bf16 (autocast, as ``--bf16`` training)
with this project's fp32 RoPE, bf16 with megatron-core's unfused RoPE (cos/sin cast to bf16), and fp32.
Each layer's core attention is replaced by a dense probe (same RoPE frequencies and mask): probabilities
are taken in fp32 from the rotated q, k of the run dtype, as flash-attention kernels do.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

import torch

from megatron_anchor.attention.reference import visibility_mask
from megatron_anchor.data import position_ids_from_doc_ids
from megatron_anchor.evaluation.deviation_grid import PATHS, REFERENCE_DELTA
from megatron_anchor.model import AnchorCoreAttention, AnchorLayout
from megatron_anchor.rope import apply_rotary_angles
from megatron_anchor.rope.invariance import megatron_unfused_rope

ROPES = ("anchor_fp32", "megatron_unfused")
PROBS_BUDGET = 2**28  # fp32 probability elements held at once (1 GiB); heads are taken in chunks


def attention_probs(
    q: torch.Tensor, k: torch.Tensor, doc_ids: torch.Tensor, mode: str, scale: float | None = None
) -> torch.Tensor:
    """fp32 masked softmax ``[b, h, s, s]`` of q ``[s, b, h, d]``, k ``[s, b, h_kv, d]`` (whole sample)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    k = k.repeat_interleave(q.shape[2] // k.shape[2], dim=2)  # [s, b, h, d]
    with torch.autocast(q.device.type, enabled=False):  # a bf16 autocast would round the logits
        logits = torch.einsum("ibhd,jbhd->bhij", q.float(), k.float()) * scale  # [b, h, s, s] fp32
    mask = visibility_mask(doc_ids, mode)[:, None]  # [b, 1, s, s]
    return logits.masked_fill(~mask, float("-inf")).softmax(dim=-1)


def shift_deviation(probs: torch.Tensor, groups: int) -> torch.Tensor:
    """``[groups-1, 3]`` sums (D, first-column sum, first-column part of D) of ``probs [groups*n, h, s, s]``
    against group 0, summed over heads and rows and averaged over the n sequences of a group."""
    b, h, s, _ = probs.shape
    probs = probs.view(groups, b // groups, h, s, s)
    diff = (probs[1:] - probs[:1]).abs()  # [groups-1, n, h, s, s]
    row_weight = 1.0 / torch.arange(1, s + 1, device=probs.device, dtype=probs.dtype)  # 1/(i+1)
    first = diff[..., 0]  # [groups-1, n, h, s]
    stats = torch.stack(
        [(diff.sum(-1) * row_weight).sum((2, 3)), first.sum((2, 3)), (first * row_weight).sum((2, 3))], dim=-1
    )  # [groups-1, n, 3]
    return stats.double().mean(1)


@dataclass
class DeviationRecorder:
    """Shared by every layer's probe: which RoPE to apply and the running deviation sums of a forward."""

    rope: str = "anchor_fp32"
    groups: int = 2
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(1, 3, dtype=torch.float64))
    tokens_seen: int = 0
    """Tokens through the model so far (every group of every forward), for throughput."""

    def reset(self, rope: str, groups: int) -> None:
        """Start a forward with ``groups`` position groups (group 0 the reference) and RoPE ``rope``."""
        if rope not in ROPES:
            raise ValueError(f"unknown RoPE implementation {rope!r}; expected one of {ROPES}")
        self.rope, self.groups = rope, groups
        self.sums = torch.zeros(groups - 1, 3, dtype=torch.float64)

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        doc_ids: torch.Tensor,
        mode: str,
        scale: float | None,
    ) -> torch.Tensor:
        """Dense attention of rotated q ``[s, b, h, d]`` over k, v ``[s, b, h_kv, d]`` -> ``[s, b, h, d]``
        in v's dtype, accumulating this layer's deviation from the probabilities on the way."""
        s, b, h, _ = q.shape
        per_kv = h // k.shape[2]
        chunk = max(per_kv, PROBS_BUDGET // (b * s * s) // per_kv * per_kv)  # whole GQA groups
        outs = []
        for start in range(0, h, chunk):
            heads = slice(start, min(start + chunk, h))
            kv = slice(start // per_kv, (heads.stop + per_kv - 1) // per_kv)
            probs = attention_probs(q[:, :, heads], k[:, :, kv], doc_ids, mode, scale)  # [b, hc, s, s]
            self.sums += shift_deviation(probs, self.groups).cpu()
            values = v[:, :, kv].repeat_interleave(per_kv, dim=2)  # [s, b, hc, d]
            # As flash kernels do: probabilities cast to the value dtype for the second matmul.
            outs.append(torch.einsum("bhij,jbhd->ibhd", probs.to(v.dtype), values))
        return torch.cat(outs, dim=2)


class DeviationProbe(AnchorCoreAttention):
    """A dense core attention with a switchable RoPE that reports its probabilities to a recorder.

    It keeps ``AnchorCoreAttention``'s constructor and documented forward interface (and its ``setup``:
    mode, frequencies, mscale), and needs the whole sample on one process (CP = 1).
    """

    def __init__(self, *args, recorder: DeviationRecorder, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.recorder = recorder

    def _rotate(self, t: torch.Tensor, layout: AnchorLayout) -> torch.Tensor:
        setup = self.setup
        if self.recorder.rope == "megatron_unfused":
            return megatron_unfused_rope(t, layout.positions, setup.inv_freq, setup.mscale, setup.interleaved)
        angles = layout.rope_angles(setup.inv_freq_on(t.device))  # the model's own fp32 angle table
        return apply_rotary_angles(t, angles, setup.mscale, interleaved=setup.interleaved)

    def forward(self, query, key, value, attention_mask, *, packed_seq_params=None, **kwargs):
        """query ``[s, b, h, d]``, key/value ``[s, b, h_kv, d]`` -> ``[s, b, h*d]``."""
        layout = packed_seq_params
        if not isinstance(layout, AnchorLayout) or layout.doc_ids.shape[1] != query.shape[0]:
            raise ValueError("the deviation probe needs an AnchorLayout of the whole sample (CP = 1)")
        q, k = self._rotate(query, layout), self._rotate(key, layout)  # run dtype
        out = self.recorder.attend(q, k, value, layout.doc_ids, self.setup.mode, self.softmax_scale)
        return out.reshape(out.shape[0], out.shape[1], -1)  # [s, b, h*d]


def attach_probes(model: torch.nn.Module) -> DeviationRecorder:
    """Replace every ``AnchorCoreAttention`` of ``model`` (it has no weights) by a probe; one recorder."""
    recorder = DeviationRecorder()
    for layer in model.decoder.layers:
        attn = layer.self_attention
        old = attn.core_attention
        if not isinstance(old, AnchorCoreAttention):
            raise TypeError(f"layer {old.layer_number}: core attention is {type(old).__name__}, not anchor")
        attn.core_attention = DeviationProbe(
            old.config,
            old.layer_number,
            None,
            "self",
            setup=old.setup,
            softmax_scale=old.softmax_scale,
            recorder=recorder,
        )
    return recorder


def set_attention_mode(model: torch.nn.Module, mode: str) -> None:
    """Switch every layer's visibility rule (``causal``, ``intra_doc``, ``anchor``) in place."""
    for layer in model.decoder.layers:
        core = layer.self_attention.core_attention
        core.setup = dataclasses.replace(core.setup, mode=mode)


def diagnostic_sequences(
    n: int,
    length: int,
    anchor_id: int,
    vocab_size: int | None = None,
    text_ids: list[int] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``[n, length]`` ids: the anchor, then consecutive windows of ``text_ids`` (cycled when short) or,
    without a text, uniform random ids in ``[1, vocab_size)``."""
    if text_ids is not None:
        if not text_ids:
            raise ValueError("the text has no tokens")
        ids = torch.tensor(text_ids, dtype=torch.long)
        body = ids.repeat(n * (length - 1) // ids.numel() + 1)[: n * (length - 1)].view(n, length - 1)
    else:
        body = torch.randint(1, vocab_size, (n, length - 1), generator=torch.Generator().manual_seed(seed))
    return torch.cat([torch.full((n, 1), anchor_id, dtype=torch.long), body], dim=1)


def document_ids(length: int, num_docs: int) -> torch.Tensor:
    """``[length]`` ids: the anchor (document 0), then ``num_docs`` contiguous near-equal documents."""
    if not 1 <= num_docs <= length - 1:
        raise ValueError(f"--num-documents {num_docs} must lie in [1, T-1 = {length - 1}]")
    docs = torch.arange(length - 1) * num_docs // (length - 1) + 1
    return torch.cat([torch.zeros(1, dtype=torch.long), docs])


def run_shifts(
    model,
    recorder: DeviationRecorder,
    tokens: torch.Tensor,
    num_docs: int,
    path: str,
    deltas: list[int],
    reference: int = REFERENCE_DELTA,
) -> dict[int, dict[str, float]]:
    """One forward of ``tokens [n, T]`` at ``reference`` and every delta; ``{delta: {D, D_first, ...}}``."""
    dtype_name, rope = PATHS[path]
    dtype = getattr(torch, dtype_name)
    n, length = tokens.shape
    shifts = torch.tensor([reference, *deltas])
    doc_ids = document_ids(length, num_docs).to(tokens.device).expand(n * len(shifts), length)
    positions = position_ids_from_doc_ids(doc_ids, "global") + shifts.repeat_interleave(n)[:, None].to(
        tokens.device
    )  # [groups * n, T]
    recorder.reset(rope, len(shifts))
    recorder.tokens_seen += doc_ids.numel()
    autocast = torch.autocast(tokens.device.type, dtype=dtype) if dtype != torch.float32 else None
    with torch.no_grad(), autocast or contextlib.nullcontext():
        model(tokens.repeat(len(shifts), 1), None, AnchorLayout(doc_ids=doc_ids, positions=positions))
    out = {}
    for delta, (d, first_sum, first_part) in zip(deltas, recorder.sums.tolist(), strict=True):
        share = first_part / d if d > 0 else 0.0
        out[delta] = {"D": d, "D_first": first_sum / length, "first_share": share}
    return out


def delta_sweep(
    model, recorder, tokens, num_docs: int, path: str, deltas: list[int], per_forward: int = 8
) -> dict[int, dict[str, float]]:
    """``run_shifts`` over ``deltas`` in forwards of ``per_forward`` deltas each (bounds the batch)."""
    out: dict[int, dict[str, float]] = {}
    for start in range(0, len(deltas), per_forward):
        out.update(run_shifts(model, recorder, tokens, num_docs, path, deltas[start : start + per_forward]))
    return out


def length_growth(
    model, recorder, tokens, num_docs: int, path: str, lengths: list[int]
) -> dict[int, dict[str, float]]:
    """Deviation of delta 0 against 16 on the first T tokens, for each T of ``lengths``."""
    return {t: run_shifts(model, recorder, tokens[:, :t], num_docs, path, [0])[0] for t in lengths}


def run_diagnostic(
    model,
    tokens: torch.Tensor,
    num_docs: int,
    modes: list[str],
    paths: list[str],
    deltas: list[int],
    sweep_length: int,
    lengths: list[int],
    per_forward: int = 8,
    progress: bool = False,
) -> dict:
    """The delta sweep on the first ``sweep_length`` of ``tokens [n, T]`` and the growth over ``lengths``
    (prefixes of the same sequences), per attention mode and numeric path.

    Returns ``{"sweep": {mode: {path: {delta: stats}}}, "growth": {mode: {path: {T: stats}}}}``.
    """
    from tqdm import tqdm

    recorder = attach_probes(model)
    results: dict = {"sweep": {m: {} for m in modes}, "growth": {m: {} for m in modes}}
    combos = [(mode, path) for mode in modes for path in paths]
    for mode, path in tqdm(combos, desc="mode x path", disable=not progress):
        set_attention_mode(model, mode)
        results["sweep"][mode][path] = delta_sweep(
            model, recorder, tokens[:, :sweep_length], num_docs, path, deltas, per_forward
        )
        results["growth"][mode][path] = length_growth(model, recorder, tokens, num_docs, path, lengths)
    results["tokens_seen"] = recorder.tokens_seen
    return results
