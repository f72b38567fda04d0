"""The tokenizer flags and the vocabulary a run builds: the tokenizer's size (or ``--vocab-size``), padded
as Megatron does.

The one reader of the tokenizer flags (``tokenizer_from_args``: ``--tokenizer-type`` with
``--tokenizer-model``, or GPT2BPETokenizer's ``--vocab-file`` and ``--merge-file``) for the trainer, its
checks and the evaluation tools. Free of torch, so the flag checks (``checkpoint_args``) can compare it with
a checkpoint's before the training stack is imported; the tokenizer is loaded once per process.
"""

from __future__ import annotations

import argparse
import functools

from megatron_anchor.data.tokenizers import TOKENIZER_TYPES, Tokenizer, tokenizer_identity
from megatron_anchor.model.config_record import pad_vocab_size
from megatron_anchor.training.report import require

NULL_TOKENIZER, GPT2_BPE = "NullTokenizer", "GPT2BPETokenizer"
# Megatron tokenizer types that are a SentencePiece model read as it is.
SENTENCEPIECE_ALIASES = ("Llama2Tokenizer", "GPTSentencePieceTokenizer")
# Megatron's tokenizer types and what reads the same tokenizer here.
_TOKENIZER_HINTS = {
    "Llama3Tokenizer": "HuggingFaceTokenizer with the model's Hugging Face directory",
    "TikTokenizer": "HuggingFaceTokenizer with the model's Hugging Face directory",
    "MistralTokenizer": "HuggingFaceTokenizer with the model's Hugging Face directory",
}


@functools.lru_cache(maxsize=4)
def _loaded(tokenizer_type: str | None, tokenizer_model: str, merge_file: str | None) -> Tokenizer:
    from megatron_anchor.data import build_tokenizer

    return build_tokenizer(tokenizer_type, tokenizer_model, merge_file)


def tokenizer_from_args(args: argparse.Namespace) -> Tokenizer:
    """The tokenizer the checked tokenizer flags name (``check_tokenizer_flags``; GPT2BPETokenizer: the
    vocab file with ``--merge-file``), loaded once per process: the checks and the run share it."""
    return _loaded(args.tokenizer_type, args.tokenizer_model, getattr(args, "merge_file", None))


def tokenizer_size(args: argparse.Namespace) -> int:
    """The vocabulary size of the tokenizer the flags name (``tokenizer_from_args``)."""
    return tokenizer_from_args(args).vocab_size


def tokenizer_record(args: argparse.Namespace, vocab_size: int) -> dict:
    """``tokenizer_identity`` of the tokenizer the flags name, its files' CRC-32s included."""
    merge_file = getattr(args, "merge_file", None)
    return tokenizer_identity(args.tokenizer_type, args.tokenizer_model, vocab_size, merge_file)


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
    return tokenizer_size(args)


def resolve_vocab_size(args: argparse.Namespace) -> int:
    """``tokenizer_vocab_size``, padded as Megatron does, or Megatron's ``--padded-vocab-size`` as it is."""
    padded = getattr(args, "padded_vocab_size", None)
    if padded is not None:
        return padded
    tp = args.tensor_model_parallel_size
    return pad_vocab_size(tokenizer_vocab_size(args), args.make_vocab_size_divisible_by, tp)


def _check_gpt2_files(args: argparse.Namespace) -> None:
    """GPT2BPETokenizer reads --vocab-file and --merge-file (its --tokenizer-model is the vocab file)."""
    require(
        args.vocab_file is not None and args.merge_file is not None and args.tokenizer_model is None,
        "--tokenizer-type GPT2BPETokenizer takes --vocab-file and --merge-file (GPT-2's vocab.json and "
        "merges.txt), not --tokenizer-model",
    )
    args.tokenizer_model = args.vocab_file


def check_tokenizer_flags(args: argparse.Namespace) -> None:
    """--tokenizer-type with its files (Megatron's SentencePiece names read as SentencePieceTokenizer); the
    tokenizer loads when the vocabulary needs its size. ValueError naming the flag."""
    kind, model = args.tokenizer_type, args.tokenizer_model
    if kind in SENTENCEPIECE_ALIASES:
        args.tokenizer_type = kind = "SentencePieceTokenizer"  # Megatron reads the same .model file
    if kind != GPT2_BPE:
        require(
            args.vocab_file is None and args.merge_file is None,
            "--vocab-file and --merge-file go with --tokenizer-type GPT2BPETokenizer",
        )
    if kind == GPT2_BPE:
        _check_gpt2_files(args)
        if args.vocab_size is None:
            _load_tokenizer(args)
        return
    if kind == NULL_TOKENIZER:
        require(model is None, "--tokenizer-type NullTokenizer takes no --tokenizer-model")
        require(args.vocab_size is not None, "--tokenizer-type NullTokenizer needs --vocab-size")
        return
    if kind is not None and kind not in TOKENIZER_TYPES:
        hint = _TOKENIZER_HINTS.get(kind)
        supported = ", ".join([*TOKENIZER_TYPES, *SENTENCEPIECE_ALIASES, GPT2_BPE, NULL_TOKENIZER])
        raise ValueError(
            f"--tokenizer-type {kind} is not supported"
            + (f": use {hint}" if hint else f"; expected one of {supported}")
        )
    require((kind is None) == (model is None), "give --tokenizer-type and --tokenizer-model together")
    if model is not None and args.vocab_size is None:  # the vocabulary (and its checks) need its size
        _load_tokenizer(args)


def check_vocabulary_source(args: argparse.Namespace) -> None:
    """A tokenizer, --vocab-size or --padded-vocab-size (a --load checkpoint gives --vocab-size)."""
    require(
        args.tokenizer_model is not None or args.vocab_size is not None or args.padded_vocab_size is not None,
        "give --tokenizer-type/--tokenizer-model or --vocab-size",
    )


def _load_tokenizer(args: argparse.Namespace) -> None:
    """The tokenizer loads (once per process: its size is cached for the vocabulary and the run); with
    --vocab-size it is loaded by ``preflight`` instead, which only reports its size."""
    try:
        tokenizer_size(args)
    except Exception as err:  # sentencepiece and transformers raise many kinds; the run cannot start
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        named = text if text.startswith("--") else f"--tokenizer-model {args.tokenizer_model}: {text}"
        raise ValueError(f"{named} (--tokenizer-type {args.tokenizer_type})") from None


def check_padded_vocab(args: argparse.Namespace) -> None:
    """Megatron's --padded-vocab-size: the model's rows as given, divisible by TP, holding every id."""
    padded = args.padded_vocab_size
    if padded is None:
        return
    tp = args.tensor_model_parallel_size
    require(
        padded % tp == 0, f"--padded-vocab-size {padded} must divide by --tensor-model-parallel-size {tp}"
    )
    if args.tokenizer_model is not None or args.vocab_size is not None:
        size = tokenizer_vocab_size(args)
        require(padded >= size, f"--padded-vocab-size {padded} is smaller than the vocabulary's {size} ids")
