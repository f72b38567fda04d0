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

import json
import os
from collections.abc import Callable
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


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


_COUNT = (_count, "a whole number")
_NUMBER = (_number, "a number")
_SWITCH = (lambda value: isinstance(value, bool), "true or false")
_TEXT = (lambda value: isinstance(value, str), "a string")
_SECTION = (lambda value: isinstance(value, dict), "a JSON object")
_MAYBE_COUNT = (_optional(_count), "a whole number or null")
_MAYBE_SECTION = (_optional(lambda value: isinstance(value, dict)), "a JSON object or null")
# What each recorded value must be, by section ("": the top level); an absent key is not checked here.
FIELD_KINDS = {
    "": {
        **dict.fromkeys(("format", "step", "tp", "cp", "dp", "world"), _COUNT),
        "consumed_samples": _MAYBE_COUNT,  # null without a schedule
        "weights_only": _SWITCH,
        **dict.fromkeys(("model", "rope"), _SECTION),
        **dict.fromkeys(("tokenizer", "schedule", "hf_config"), _MAYBE_SECTION),
    },
    "model": {
        **dict.fromkeys(
            ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups"),
            _COUNT,
        ),
        **dict.fromkeys(("vocab_size", "padded_vocab_size", "make_vocab_size_divisible_by"), _MAYBE_COUNT),
        **dict.fromkeys(("norm_epsilon", "hidden_dropout", "init_method_std"), _NUMBER),
        **dict.fromkeys(("normalization", "attention_mode", "position_ids"), _TEXT),
        **dict.fromkeys(
            (
                "apply_layernorm_1p",
                "swiglu",
                "add_bias_linear",
                "add_qkv_bias",
                "untie_embeddings_and_output_weights",
            ),
            _SWITCH,
        ),  # fmt: skip
    },
    "rope": {
        **dict.fromkeys(("rotary_base", "rotary_percent"), _NUMBER),
        "rotary_interleaved": _SWITCH,
        "rope_scaling": _MAYBE_SECTION,
    },
    "schedule": {"global_batch_size": _COUNT, "train_iters": _COUNT},
}


def meta_problem(meta: dict) -> str | None:
    """What is wrong with the kinds of ``meta``'s values (a hand edit: ``"step": "four"``), or None."""
    if "step" not in meta:
        return "it records no 'step'"
    for section, kinds in FIELD_KINDS.items():
        values = meta.get(section) if section else meta
        if not isinstance(values, dict):
            continue  # an absent or null section; a section of another kind is the top level's problem
        for key, (check, kind) in kinds.items():
            if key in values and not check(values[key]):
                name = f"{section}.{key}" if section else key
                return f"'{name}' is {json.dumps(values[key])}, not {kind}"
    return None


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
