"""Model and RoPE flags (Megatron's names, meanings and defaults), shared by the trainer and the evaluation
tools, and the one rule that resolves them: a flag given on the command line, else the value the ``--load``
checkpoint records (Megatron's ``--use-checkpoint-args``, automatic for omitted flags), else Megatron's
default. ``--num-layers``, ``--hidden-size`` and ``--num-attention-heads`` are required only when no
checkpoint supplies them.

A given flag that contradicts the checkpoint's shape or architecture is an error naming the flag and both
values; a new RoPE base or scaling, or another dropout, is a deliberate change reported on one line. The
attention mode and RoPE positions are training choices, never taken from a checkpoint: a run trains with
its own (default: anchor, global) and a difference from the checkpoint's is reported on one line.
"""

from __future__ import annotations

import argparse
import json

from megatron_anchor.model.config_record import (
    CHANGEABLE_KEYS,
    SHAPE_KEYS,
    SWITCHES,
    TRAINING_CHOICES,
    flag_name,
    flag_setting,
    recorded_model,
    switch_on,
)
from megatron_anchor.parallel.layout_names import ATTENTION_MODES
from megatron_anchor.rope.args import ROPE_DEFAULTS, add_rope_args, rope_scaling_from_args
from megatron_anchor.rope.scaling import MEGATRON_LLAMA3_SCALING, RopeScaling
from megatron_anchor.training.megatron_flags import add_flag
from megatron_anchor.training.report import raise_all

REQUIRED = object()
# Value of each model flag left out when no checkpoint records it (None: derived in validate_model_args):
# Megatron-LM's defaults (LayerNorm, GeLU, linear biases, tied embeddings, dropout 0.1).
MODEL_DEFAULTS: dict[str, object] = {
    "num_layers": REQUIRED,
    "hidden_size": REQUIRED,
    "num_attention_heads": REQUIRED,
    "ffn_hidden_size": None,
    "num_query_groups": None,
    "normalization": "LayerNorm",
    "apply_layernorm_1p": False,
    "swiglu": False,
    "add_bias_linear": True,
    "add_qkv_bias": False,
    "untie_embeddings_and_output_weights": False,
    "hidden_dropout": 0.1,
    "init_method_std": 0.02,
    "norm_epsilon": 1e-5,
    "make_vocab_size_divisible_by": 128,
    **ROPE_DEFAULTS,
}
# The Llama family's architecture (also Qwen2's and Mistral's, Qwen2 adding --add-qkv-bias) as flags.
LLAMA_ARCHITECTURE_FLAGS = (
    "--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear",
    "--untie-embeddings-and-output-weights", "--hidden-dropout", "0",
)  # fmt: skip
# Recorded keys taken when left out, never compared when given: the initialisation std does nothing to
# loaded weights, and the padded vocabulary that the divisor gives is compared with the checkpoint's rows.
UNCHECKED_KEYS = ("init_method_std", "make_vocab_size_divisible_by")


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Model-shape, architecture and RoPE flags; each left out is taken from the ``--load`` checkpoint,
    else Megatron's default."""
    g = p.add_argument_group(
        "model",
        "Flags left out are taken from the --load checkpoint's meta.json when it records them, else "
        "Megatron-LM's default; --num-layers, --hidden-size and --num-attention-heads are required without "
        "a checkpoint. Llama: --normalization RMSNorm --swiglu --disable-bias-linear "
        "--untie-embeddings-and-output-weights --hidden-dropout 0.",
    )
    for flag in ("--num-layers", "--hidden-size", "--ffn-hidden-size", "--num-attention-heads"):
        add_flag(g, flag, type=int, default=None)
    add_flag(g, "--num-query-groups", type=int, default=None)
    add_flag(g, "--normalization", choices=("LayerNorm", "RMSNorm"), default=None)
    add_flag(g, "--norm-epsilon", type=float, default=None)
    for key, (flag, value) in SWITCHES.items():
        if key != "rotary_interleaved":  # a RoPE flag (add_rope_args)
            add_flag(g, flag, dest=key, action="store_const", const=value, default=None)
    add_flag(g, "--hidden-dropout", type=float, default=None)
    add_flag(g, "--init-method-std", type=float, default=None)
    add_flag(g, "--make-vocab-size-divisible-by", type=int, default=None)
    add_flag(g, "--attention-mode", choices=ATTENTION_MODES, default="anchor")
    add_flag(g, "--recompute-granularity", choices=("full", "selective"), default=None)
    add_flag(
        g, "--recompute-activations", dest="recompute_granularity", action="store_const", const="selective"
    )
    add_flag(g, "--transformer-impl", choices=("local", "transformer_engine"), default=None)
    add_rope_args(p)
    g = p.add_argument_group("Megatron's Llama 3.1 RoPE scaling")
    add_flag(g, "--use-rope-scaling", action="store_true")
    add_flag(g, "--rope-scaling-factor", type=float, default=8.0)
    p.set_defaults(**dict.fromkeys(ROPE_DEFAULTS))  # None = left out: the checkpoint's, else a default


def apply_megatron_rope_scaling(args: argparse.Namespace) -> None:
    """Megatron's ``--use-rope-scaling`` as the ``--rope-scaling`` JSON of the same strategy (Llama 3.1)."""
    if not getattr(args, "use_rope_scaling", False):
        return
    scaling = {"rope_type": "llama3", "factor": args.rope_scaling_factor, **MEGATRON_LLAMA3_SCALING}
    if args.rope_scaling is not None and json.loads(args.rope_scaling) != scaling:
        raise ValueError("give either --use-rope-scaling or --rope-scaling, not both")
    args.rope_scaling = json.dumps(scaling)


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


def _conflict(key: str, given: object, want: object, path: str) -> str:
    has = flag_setting(key, want) if key in SWITCHES else f"{key} {want}"
    return (
        f"{flag_setting(key, given)} contradicts checkpoint {path}, which has {has}: leave the flag out to "
        f"use the checkpoint's value"
    )


def _training_choices(args: argparse.Namespace, recorded: dict, path: str) -> list[str]:
    """One note per training choice (attention mode, positions) that differs from the checkpoint's."""
    notes = []
    for key in TRAINING_CHOICES:
        want, here = recorded.get(key), getattr(args, key, None)
        if want is not None and here is not None and want != here:
            how = ""  # parsers other than the trainer's do not record which flags were given
            if hasattr(args, "given_flags"):
                how = " (given)" if flag_name(key) in args.given_flags else " (the default)"
            notes.append(f"{flag_name(key)} {here}{how} trains this run; checkpoint {path} was trained with "
                         f"{want}")
    return notes


def apply_checkpoint_model(args: argparse.Namespace, meta: dict, path: str) -> list[str]:
    """Fill the model flags left out from checkpoint ``path``'s ``meta`` and check the given ones against
    it. Returns one-line notes (values taken, deliberate changes, other training choices); ConfigError
    listing every flag that contradicts the checkpoint's shape."""
    apply_megatron_rope_scaling(args)
    recorded = recorded_model(meta)
    taken, changed, errors = [], [], []
    for key in (*SHAPE_KEYS, *CHANGEABLE_KEYS, *UNCHECKED_KEYS):
        if key not in recorded or (recorded[key] is None and key != "rope_scaling"):
            continue  # not recorded (rope_scaling None is: no scaling)
        want = recorded[key]
        if key == "rope_scaling":
            is_given, given = _given_scaling(args)
        else:
            given = getattr(args, key, None)
            is_given = given is not None
        if not is_given:
            if want is not None:
                setattr(args, key, json.dumps(want) if key == "rope_scaling" else want)
                if key not in SWITCHES or switch_on(key, want):  # an unset switch goes unsaid
                    taken.append(flag_setting(key, want))
        elif not _same(key, given, want) and key not in UNCHECKED_KEYS:
            if key not in CHANGEABLE_KEYS:
                errors.append(_conflict(key, given, want, path))
            else:
                changed.append(f"{flag_name(key)} {given} replaces the checkpoint's {want}")  # never a switch
    raise_all(errors)
    taken += _fill_vocab(args, meta)
    notes = [f"from checkpoint {path}: " + " ".join(taken)] if taken else []
    if changed:
        notes.append("deliberate change from the checkpoint: " + "; ".join(changed))
    return notes + _training_choices(args, recorded, path)


def validate_model_args(args: argparse.Namespace, tp: int) -> None:
    """Defaults for flags still unset, required flags, and the shape's rules (ConfigError listing every
    problem)."""
    apply_megatron_rope_scaling(args)
    missing = []
    for key, default in MODEL_DEFAULTS.items():
        if getattr(args, key) is not None:
            continue
        if default is REQUIRED:
            missing.append(f"{flag_name(key)} is required (or --load a checkpoint that records it)")
        setattr(args, key, None if default is REQUIRED else default)
    raise_all(missing)
    heads = args.num_attention_heads
    args.num_query_groups = args.num_query_groups or heads
    if args.ffn_hidden_size is None:
        # Megatron's rule: 4 x hidden, or for SwiGLU 2/3 of that rounded down to a multiple of 64.
        swiglu = args.swiglu
        args.ffn_hidden_size = int(4 * args.hidden_size * 2 / 3 / 64) * 64 if swiglu else 4 * args.hidden_size
    groups = args.num_query_groups
    checks = [
        (args.hidden_size % heads == 0, f"--hidden-size {args.hidden_size} not divisible by heads {heads}"),
        (heads % tp == 0, f"--num-attention-heads {heads} not divisible by TP size {tp}"),
        (heads % groups == 0, f"--num-attention-heads {heads} not divisible by --num-query-groups {groups}"),
        (groups % tp == 0, f"--num-query-groups {groups} not divisible by TP size {tp}"),
        (0 <= args.hidden_dropout < 1, f"--hidden-dropout {args.hidden_dropout} must lie in [0, 1)"),
    ]
    errors = [message for ok, message in checks if not ok]
    try:
        rope_scaling_from_args(args)  # a malformed --rope-scaling fails here, naming the flag
    except ValueError as err:
        errors.append(str(err))
    raise_all(errors)


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
    from megatron_anchor.data.tokenizers import same_vocabulary_files
    from megatron_anchor.training.vocab import tokenizer_record, tokenizer_size

    try:
        size, vocab = tokenizer_size(args), args.vocab_size
    except (OSError, ValueError):
        return []  # a tokenizer that does not load is the tokenizer check's to report (preflight)
    given = f"--tokenizer-model {args.tokenizer_model} ({size} ids)"
    if vocab is not None and size > vocab:
        raise ValueError(
            f"{given} does not fit the model's vocabulary of {vocab} (checkpoint {path}): ids {vocab}-"
            f"{size - 1} have no embedding row; use the tokenizer the model was trained with"
        )
    recorded = meta.get("tokenizer") or {}
    here = tokenizer_record(args, 0)["crc32"]  # reads the files: only with a checkpoint
    parts = []
    if recorded.get("crc32") and not same_vocabulary_files(here, recorded["crc32"]):
        parts.append(f"not the tokenizer checkpoint {path} was written with ({recorded.get('model')})")
    if vocab is not None and size < vocab:
        parts.append(f"the model keeps its vocabulary of {vocab} (ids {size}-{vocab - 1} unused)")
    return [f"{given}: " + "; ".join(parts)] if parts else []
