"""Model and RoPE flags (Megatron's names), shared by the trainer and the evaluation tools, and the one rule
that resolves them: a flag given on the command line, else the value the ``--load`` checkpoint records
(Megatron's ``--use-checkpoint-args``, automatic for omitted flags), else its default. ``--num-layers``,
``--hidden-size`` and ``--num-attention-heads`` are required only when no checkpoint supplies them.

A given flag that contradicts the checkpoint's shape is an error naming the flag and both values; a new
RoPE base or scaling, or another attention mode, is a deliberate change and is reported on one line.
"""

from __future__ import annotations

import argparse
import json

from megatron_anchor.attention.modes import ATTENTION_MODES
from megatron_anchor.model.config_record import CHANGEABLE_KEYS, SHAPE_KEYS
from megatron_anchor.rope.args import ROPE_DEFAULTS, add_rope_args, rope_scaling_from_args
from megatron_anchor.rope.scaling import RopeScaling

REQUIRED = object()
# Value of each model flag left out when no checkpoint records it (None: derived in validate_model_args).
MODEL_DEFAULTS: dict[str, object] = {
    "num_layers": REQUIRED,
    "hidden_size": REQUIRED,
    "num_attention_heads": REQUIRED,
    "ffn_hidden_size": None,
    "num_query_groups": None,
    "add_qkv_bias": False,
    "untie_embeddings_and_output_weights": True,
    "init_method_std": 0.02,
    "norm_epsilon": 1e-5,
    "make_vocab_size_divisible_by": 128,
    "attention_mode": "anchor",
    **ROPE_DEFAULTS,
}


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model-shape and RoPE flags; each left out is taken from the ``--load`` checkpoint, else defaulted."""
    g = p.add_argument_group(
        "model",
        "Flags left out are taken from the --load checkpoint's meta.json when it records them, else their "
        "default; --num-layers, --hidden-size and --num-attention-heads are required without a checkpoint.",
    )
    g.add_argument("--num-layers", type=int, default=None, help="transformer layers")
    g.add_argument("--hidden-size", type=int, default=None, help="model width")
    g.add_argument(
        "--ffn-hidden-size",
        type=int,
        default=None,
        help="MLP width; default 4 x hidden, or with --swiglu Megatron's int(8/3 x hidden / 64) x 64",
    )
    g.add_argument("--num-attention-heads", type=int, default=None, help="query heads")
    g.add_argument("--num-query-groups", type=int, default=None, help="key/value heads (GQA); default: heads")
    g.add_argument("--add-qkv-bias", action="store_true", default=None, help="Qwen2-style qkv bias")
    g.add_argument(
        "--share-embeddings-and-output-weights",
        dest="untie_embeddings_and_output_weights",
        action="store_false",
        default=None,
        help="tie input and output embeddings (untied by default, as in Llama; Megatron ties by default)",
    )
    g.add_argument(
        "--init-method-std", type=float, default=None, help="std of the initial weights; default: 0.02"
    )
    g.add_argument("--norm-epsilon", type=float, default=None, help="RMSNorm epsilon; default: 1e-5")
    g.add_argument(
        "--make-vocab-size-divisible-by",
        type=int,
        default=None,
        help="pad the vocabulary (x TP); default: 128",
    )
    g.add_argument(
        "--attention-mode", choices=ATTENTION_MODES, default=None, help="visibility rule; default: anchor"
    )
    g.add_argument(
        "--recompute-granularity",
        choices=("full", "selective"),
        default=None,
        help="full: recompute whole layers in backward; selective: the attention only",
    )
    g.add_argument(
        "--transformer-impl",
        choices=("local", "transformer_engine"),
        default=None,
        help="layer implementation; default: Transformer Engine's when it imports, else megatron-core's "
        "local layers (Megatron: transformer_engine)",
    )
    add_rope_args(p)
    p.set_defaults(**dict.fromkeys(ROPE_DEFAULTS))  # None = left out: the checkpoint's, else a default


def _flag(key: str) -> str:
    return "--" + (
        "share-embeddings-and-output-weights" if key.startswith("untie") else key.replace("_", "-")
    )


def _switch_on(key: str, value: bool) -> bool:
    return value != key.startswith("untie")  # --share-embeddings-and-output-weights sets untie False


def _setting(key: str, value: object) -> str:
    """``key = value`` as the command line says it: a switch by its presence (``--add-qkv-bias``, or
    ``no --add-qkv-bias``; the tie switch inverted), any other flag with its value."""
    if isinstance(value, bool):
        return _flag(key) if _switch_on(key, value) else f"no {_flag(key)}"
    return f"{_flag(key)} {value}"


def _given_scaling(args: argparse.Namespace) -> tuple[bool, dict | None]:
    """(whether a RoPE scaling flag was given, the strategy it gives as a dict or None)."""
    if args.rope_scaling is None and getattr(args, "rotary_seq_len_interpolation_factor", None) is None:
        return False, None
    scaling = rope_scaling_from_args(args)
    return True, None if scaling is None else scaling.to_dict()


def _same(key: str, given: object, recorded: object) -> bool:
    if key == "rope_scaling":
        as_obj = [None if v is None else RopeScaling.from_dict(v) for v in (given, recorded)]
        return as_obj[0] == as_obj[1]
    return given == recorded


def apply_checkpoint_model(args: argparse.Namespace, meta: dict, path: str) -> list[str]:
    """Fill the model flags left out from checkpoint ``path``'s ``meta`` and check the given ones against
    it. Returns one-line notes (values taken, deliberate changes); ValueError on a shape conflict."""
    recorded = {**meta.get("model", {}), **meta.get("rope", {})}
    taken, changed = [], []
    for key in (*SHAPE_KEYS, *CHANGEABLE_KEYS, "init_method_std", "make_vocab_size_divisible_by"):
        if key not in recorded or (recorded[key] is None and key != "rope_scaling"):
            continue  # not recorded (rope_scaling None is: no scaling)
        want = recorded[key]
        if key == "rope_scaling":
            is_given, given = _given_scaling(args)
        else:
            given = getattr(args, key)
            is_given = given is not None
        if not is_given:
            if want is not None:
                setattr(args, key, json.dumps(want) if key == "rope_scaling" else want)
                if not isinstance(want, bool) or _switch_on(key, want):  # an unset switch goes unsaid
                    taken.append(_setting(key, want))
        elif not _same(key, given, want):
            if key not in CHANGEABLE_KEYS:
                raise ValueError(
                    f"{_setting(key, given)} contradicts checkpoint {path}, which has "
                    f"{_setting(key, want) if isinstance(want, bool) else f'{key} {want}'}: "
                    f"leave the flag out to use the checkpoint's value"
                )
            changed.append(f"{_flag(key)} {given} replaces the checkpoint's {want}")  # never a switch
    taken += _fill_vocab(args, meta)
    notes = [f"from checkpoint {path}: " + " ".join(taken)] if taken else []
    if changed:
        notes.append("deliberate change from the checkpoint: " + "; ".join(changed))
    return notes


def validate_model_args(args: argparse.Namespace, tp: int) -> None:
    """Defaults for flags still unset, required flags, and the shape's divisibility rules (ValueError)."""
    for key, default in MODEL_DEFAULTS.items():
        if getattr(args, key) is not None:
            continue
        if default is REQUIRED:
            raise ValueError(f"{_flag(key)} is required (or --load a checkpoint that records it)")
        setattr(args, key, default)
    heads = args.num_attention_heads
    args.num_query_groups = args.num_query_groups or heads
    if args.ffn_hidden_size is None:
        # Megatron's rule: 4 x hidden, or for SwiGLU 2/3 of that rounded down to a multiple of 64.
        swiglu = getattr(args, "swiglu", False)
        args.ffn_hidden_size = int(4 * args.hidden_size * 2 / 3 / 64) * 64 if swiglu else 4 * args.hidden_size
    checks = [
        (args.hidden_size % heads == 0, f"--hidden-size {args.hidden_size} not divisible by heads {heads}"),
        (heads % tp == 0, f"--num-attention-heads {heads} not divisible by TP size {tp}"),
        (
            heads % args.num_query_groups == 0,
            f"--num-attention-heads {heads} not divisible by --num-query-groups {args.num_query_groups}",
        ),
        (
            args.num_query_groups % tp == 0,
            f"--num-query-groups {args.num_query_groups} not divisible by TP size {tp}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    rope_scaling_from_args(args)  # a malformed --rope-scaling fails here, naming the flag


def _fill_vocab(args: argparse.Namespace, meta: dict) -> list[str]:
    """Without --vocab-size: the checkpoint's vocabulary size, the model's whatever the tokenizer's (a
    smaller tokenizer leaves rows unused; ``check_checkpoint_vocab`` says so and refuses a larger one)."""
    vocab = meta.get("model", {}).get("vocab_size")
    if args.vocab_size is not None or vocab is None:
        return []
    args.vocab_size = vocab
    return [] if args.tokenizer_model is not None else [f"--vocab-size {vocab}"]


def check_checkpoint_vocab(args: argparse.Namespace, meta: dict, path: str, padded: int) -> list[str]:
    """The run's padded vocabulary (``padded``) must be the checkpoint's embedding size, and the tokenizer's
    ids must fit the model's vocabulary; a smaller tokenizer, or one whose files differ from the recorded
    one, is reported on one line. Returns notes; ValueError on a size mismatch."""
    model = meta.get("model", {})
    want = model.get("padded_vocab_size")
    if want is not None and padded != want:
        source = (
            f"--tokenizer-model {args.tokenizer_model}"
            if args.tokenizer_model
            else f"--vocab-size {args.vocab_size}"
        )
        raise ValueError(
            f"{source} gives a padded vocabulary of {padded} (--make-vocab-size-divisible-by "
            f"{args.make_vocab_size_divisible_by}), but checkpoint {path} has {want} rows "
            f"(vocabulary {model.get('vocab_size')})"
        )
    if not args.tokenizer_model:
        return []
    from megatron_anchor.checkpoint import tokenizer_identity  # reads files: only with a checkpoint
    from megatron_anchor.training.vocab import tokenizer_size

    try:
        size, vocab = tokenizer_size(args.tokenizer_type, args.tokenizer_model), args.vocab_size
    except (OSError, ValueError):
        return []  # a tokenizer that does not load is the tokenizer check's to report (preflight)
    given = f"--tokenizer-model {args.tokenizer_model} ({size} ids)"
    if vocab is not None and size > vocab:
        raise ValueError(
            f"{given} does not fit the model's vocabulary of {vocab} (checkpoint {path}): ids {vocab}-"
            f"{size - 1} have no embedding row; use the tokenizer the model was trained with"
        )
    recorded = meta.get("tokenizer") or {}
    here = tokenizer_identity(args.tokenizer_type, args.tokenizer_model, 0)["crc32"]
    parts = []
    if recorded.get("crc32") and here != recorded["crc32"]:
        parts.append(f"not the tokenizer checkpoint {path} was written with ({recorded.get('model')})")
    if vocab is not None and size < vocab:
        parts.append(f"the model keeps its vocabulary of {vocab} (ids {size}-{vocab - 1} unused)")
    return [f"{given}: " + "; ".join(parts)] if parts else []
