"""The checkpoint contract: what every checkpoint's ``meta.json`` records, for the trainer's and the
converter's writers alike.

``meta.json`` (format 2)::

    format, step, consumed_samples, weights_only     (weights_only: no optimizer/RNG, a run starts at step 0)
    tp, cp, dp, world                                 parallel sizes it was written at
    model   {num_layers, hidden_size, ..., vocab_size, padded_vocab_size, attention_mode}
    rope    {rotary_base, rotary_percent, rotary_interleaved, rope_scaling}
    tokenizer {type, model, vocab_size, crc32}        or None
    schedule {train_iters, lr, min_lr, lr_warmup_iters, lr_decay_iters, lr_decay_style, ...} or None
    files   {relative path: {size, crc32}}            every file of the checkpoint but meta.json

``model`` and ``rope`` use the trainer's flag names (``megatron_anchor.model.config_record``), so readers
take omitted flags from them.
"""

from __future__ import annotations

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
