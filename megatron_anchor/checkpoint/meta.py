"""The checkpoint contract: what every checkpoint's ``meta.json`` records, for the trainer's and the
converter's writers alike.

``meta.json`` (format 2)::

    format, step, consumed_samples, weights_only     (weights_only: no optimizer/RNG, a run starts at step 0)
    tp, cp, dp, world                                 parallel sizes it was written at
    model   {num_layers, hidden_size, ..., vocab_size, padded_vocab_size, attention_mode}
    rope    {rotary_base, rotary_percent, rotary_interleaved, rope_scaling}
    tokenizer {type, model, vocab_size, crc32[, merge_file]}  or None (merge_file: GPT2BPETokenizer's)
    schedule {train_iters, lr, min_lr, lr_warmup_iters, lr_decay_iters, lr_decay_style, ...} or None
    files   {relative path: {size, crc32}}            every file of the checkpoint but meta.json

``model`` and ``rope`` use the trainer's flag names (``megatron_anchor.model.config_record``), so readers
take omitted flags from them.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from megatron_anchor.data.tokenizers import tokenizer_identity  # noqa: F401  (part of the contract)

FORMAT_VERSION = 2


def checkpoint_meta(
    *,
    step: int,
    consumed_samples: int,
    record: dict,
    tokenizer: dict | None,
    schedule: dict | None,
    sizes: dict,
    weights_only: bool,
    **extra,
) -> dict:
    """A ``meta.json`` dict without ``files`` (added by the writer once every file is on disk).

    ``record``: ``{"model": ..., "rope": ...}``; ``sizes``: ``{"tp", "cp", "dp", "world"}``; ``extra``: other
    keys (e.g. ``hf_config`` of a converted model, carried into the checkpoints trained from it).
    """
    return {
        "format": FORMAT_VERSION,
        "step": step,
        "consumed_samples": consumed_samples,
        "weights_only": weights_only,
        **{k: sizes[k] for k in ("tp", "cp", "dp", "world")},
        "model": record["model"],
        "rope": record["rope"],
        "tokenizer": tokenizer,
        "schedule": schedule,
        **extra,
    }


class RecordedTokenizer(NamedTuple):
    """The tokenizer files a checkpoint records: ``model`` (GPT2BPETokenizer: its vocab file) and
    GPT2BPETokenizer's ``merge_file``."""

    type: str | None
    model: str
    merge_file: str | None = None


def recorded_tokenizer(meta: dict) -> RecordedTokenizer | None:
    """The tokenizer a checkpoint was written with, or None when it records none. ValueError (one line,
    naming the path) when its files are gone or have changed since."""
    record = meta.get("tokenizer") or {}
    path, merge_file = record.get("model"), record.get("merge_file")
    if not path:
        return None
    for name in (path, merge_file):
        if name and not os.path.exists(name):
            raise ValueError(f"its tokenizer {name} no longer exists")
    crc = tokenizer_identity(record.get("type"), path, 0, merge_file)["crc32"]
    if record.get("crc32") and crc != record["crc32"]:
        was = record["crc32"]
        raise ValueError(f"its tokenizer files at {path} have changed since (CRC-32 {crc}, {was} then)")
    return RecordedTokenizer(record.get("type"), path, merge_file)


def trained_length(meta: dict) -> int | None:
    """The sequence length a checkpoint's weights were trained at: the run's ``--seq-length`` (recorded with
    its schedule), else a converted model's context (``max_position_embeddings``); None if neither."""
    length = (meta.get("schedule") or {}).get("seq_length")
    if length:
        return int(length)
    context = (meta.get("model") or {}).get("max_position_embeddings")
    context = context or (meta.get("hf_config") or {}).get("max_position_embeddings")
    return int(context) if context else None
