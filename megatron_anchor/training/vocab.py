"""The vocabulary a run builds: the tokenizer's size (or ``--vocab-size``), padded as Megatron does.

Free of torch, so the flag checks (``checkpoint_args``) can compare it with a checkpoint's before the
training stack is imported; the tokenizer is loaded once per process.
"""

from __future__ import annotations

import argparse
import functools

from megatron_anchor.model.config_record import pad_vocab_size


@functools.lru_cache(maxsize=4)
def tokenizer_size(tokenizer_type: str | None, tokenizer_model: str, merge_file: str | None = None) -> int:
    """The vocabulary size of a tokenizer (loaded once per process: the checks and the run share it)."""
    from megatron_anchor.data import build_tokenizer

    return build_tokenizer(tokenizer_type, tokenizer_model, merge_file).vocab_size


def tokenizer_vocab_size(args: argparse.Namespace) -> int:
    """``--vocab-size`` when given, else the tokenizer's vocabulary size (unpadded).

    ``--vocab-size`` wins over the tokenizer because a model's embedding may be larger than its
    tokenizer (Qwen2's config holds 151,936 rows for 151,665 tokens); ``preflight`` checks every token
    id fits.
    """
    if args.vocab_size is not None:
        return args.vocab_size
    if args.tokenizer_model is None and getattr(args, "padded_vocab_size", None) is not None:
        return args.padded_vocab_size
    return tokenizer_size(args.tokenizer_type, args.tokenizer_model, getattr(args, "merge_file", None))


def resolve_vocab_size(args: argparse.Namespace) -> int:
    """``tokenizer_vocab_size``, padded as Megatron does, or Megatron's ``--padded-vocab-size`` as it is."""
    padded = getattr(args, "padded_vocab_size", None)
    if padded is not None:
        return padded
    tp = args.tensor_model_parallel_size
    return pad_vocab_size(tokenizer_vocab_size(args), args.make_vocab_size_divisible_by, tp)
