"""Tokenizers for preprocessing: thin wrappers over sentencepiece and transformers, loaded offline.

megatron-core 0.16 ships tokenizer wrappers too (``megatron.core.tokenizers``), but importing them imports
all of megatron-core and transformers (seconds per process) and they encode one text per call. These
wrappers import only their own library, so pool workers start fast, and add a batched ``encode_batch``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import re
from collections.abc import Iterable

import numpy as np

from megatron_anchor._files import file_crc32, os_error_message, sync_and_close

TOKENIZER_TYPES = ("SentencePieceTokenizer", "HuggingFaceTokenizer")
# A Hugging Face tokenizer directory holds at least one of these (fast, config, or a slow vocabulary).
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "vocab.txt")
# Megatron's GPT2BPETokenizer files (--vocab-file, --merge-file) under their Hugging Face names.
GPT2_FILES = ("vocab.json", "merges.txt")
# Files that define a Hugging Face tokenizer's vocabulary (the rest is configuration).
VOCAB_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt")


def has_hf_tokenizer(directory: str) -> bool:
    """Whether ``directory`` holds a Hugging Face tokenizer's files."""
    return any(os.path.isfile(os.path.join(directory, name)) for name in HF_TOKENIZER_FILES)


class SentencePieceTokenizer:
    """A SentencePiece ``.model`` file; ``bos_id``/``eos_id``/``pad_id`` are ``None`` where absent."""

    def __init__(self, model_path: str) -> None:
        if not os.path.isfile(model_path):
            raise FileNotFoundError(f"--tokenizer-model: no SentencePiece model file at {model_path}")
        import sentencepiece

        self.model_path = model_path
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=model_path)
        except (RuntimeError, OSError) as error:  # sentencepiece's parse errors are RuntimeErrors
            raise OSError(f"--tokenizer-model {model_path}: not a SentencePiece model ({error})") from None

    def encode(self, text: str) -> list[int]:
        """Token ids of one text (no BOS/EOS added)."""
        return self._sp.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts in one call (single-threaded: the process pool gives parallelism)."""
        return self._sp.encode(texts, num_threads=1)

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of many texts as int32 arrays, made in C++ without Python ints where supported."""
        try:
            return self._sp.encode(texts, return_type="numpy", num_threads=1)
        except (TypeError, ValueError):  # sentencepiece < 0.2.1 has no numpy return type
            return [np.asarray(ids, dtype=np.int32) for ids in self.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        """Text of token ids."""
        return self._sp.decode(ids)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int | None:
        return _optional_id(self._sp.bos_id())

    @property
    def eos_id(self) -> int | None:
        return _optional_id(self._sp.eos_id())

    @property
    def pad_id(self) -> int | None:
        return _optional_id(self._sp.pad_id())

    def __reduce__(self):
        return (SentencePieceTokenizer, (self.model_path,))


class HuggingFaceTokenizer:
    """A local directory of Hugging Face tokenizer files, loaded with ``AutoTokenizer`` offline."""

    def __init__(self, tokenizer_dir: str) -> None:
        if not os.path.isdir(tokenizer_dir):
            raise FileNotFoundError(f"--tokenizer-model: no tokenizer directory at {tokenizer_dir}")
        if not has_hf_tokenizer(tokenizer_dir):
            raise FileNotFoundError(
                f"--tokenizer-model {tokenizer_dir}: no Hugging Face tokenizer files in this directory "
                f"(expected one of {', '.join(HF_TOKENIZER_FILES)})"
            )
        from transformers import AutoTokenizer

        self.tokenizer_dir = tokenizer_dir
        try:
            self._tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as error:  # transformers' errors span these
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise OSError(f"--tokenizer-model {tokenizer_dir}: cannot load a tokenizer ({reason})") from None
        if len(self._tok) <= len(self._tok.all_special_ids):  # e.g. a config whose vocabulary file is missing
            raise OSError(f"--tokenizer-model {tokenizer_dir}: no vocabulary beyond the special tokens")

    def encode(self, text: str) -> list[int]:
        """Token ids of one text; the tokenizer's own special tokens are not added (the anchor is)."""
        return self._tok(text, add_special_tokens=False)["input_ids"]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of many texts in one call."""
        if not texts:
            return []
        return self._tok(texts, add_special_tokens=False)["input_ids"]

    def encode_arrays(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of many texts as int64 arrays."""
        return [np.asarray(ids, dtype=np.int64) for ids in self.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        """Text of token ids."""
        return self._tok.decode(ids)

    @property
    def vocab_size(self) -> int:
        return len(self._tok)

    @property
    def bos_id(self) -> int | None:
        return self._tok.bos_token_id

    @property
    def eos_id(self) -> int | None:
        return self._tok.eos_token_id

    @property
    def pad_id(self) -> int | None:
        return self._tok.pad_token_id

    def __reduce__(self):
        return (HuggingFaceTokenizer, (self.tokenizer_dir,))


class GPT2BPETokenizer(HuggingFaceTokenizer):
    """GPT-2's byte-level BPE from Megatron's ``--vocab-file`` (vocab.json) and ``--merge-file``
    (merges.txt), read by transformers' ``GPT2TokenizerFast`` offline."""

    def __init__(self, vocab_file: str, merge_file: str) -> None:
        for flag, path in (("--vocab-file", vocab_file), ("--merge-file", merge_file)):
            if not os.path.isfile(path or ""):
                raise FileNotFoundError(f"{flag}: no file at {path}")
        import inspect

        from transformers import GPT2TokenizerFast

        self.vocab_file, self.merge_file = vocab_file, merge_file
        # transformers 5 names the two files vocab/merges; 4.x vocab_file/merges_file.
        names = ("vocab_file", "merges_file")
        if "vocab_file" not in inspect.signature(GPT2TokenizerFast.__init__).parameters:
            names = ("vocab", "merges")
        try:
            self._tok = GPT2TokenizerFast(**dict(zip(names, (vocab_file, merge_file))))
        except Exception as error:  # tokenizers' parse errors are plain Exceptions
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            files = f"--vocab-file {vocab_file} / --merge-file {merge_file}"
            raise OSError(f"{files}: not GPT-2 BPE files ({reason})") from None

    def __reduce__(self):
        return (GPT2BPETokenizer, (self.vocab_file, self.merge_file))


Tokenizer = SentencePieceTokenizer | HuggingFaceTokenizer


def build_tokenizer(tokenizer_type: str, tokenizer_model: str, merge_file: str | None = None) -> Tokenizer:
    """The tokenizer named by Megatron's ``--tokenizer-type`` / ``--tokenizer-model`` flags (for
    ``GPT2BPETokenizer``: ``tokenizer_model`` is ``--vocab-file``, with ``merge_file``)."""
    if tokenizer_type == "SentencePieceTokenizer":
        return SentencePieceTokenizer(tokenizer_model)
    if tokenizer_type == "HuggingFaceTokenizer":
        return HuggingFaceTokenizer(tokenizer_model)
    if tokenizer_type == "GPT2BPETokenizer":
        if merge_file is None:
            raise ValueError("--tokenizer-type GPT2BPETokenizer needs --merge-file beside --vocab-file")
        return GPT2BPETokenizer(tokenizer_model, merge_file)
    raise ValueError(
        f"--tokenizer-type {tokenizer_type!r} is not supported; expected one of {TOKENIZER_TYPES}"
    )


def tokenizer_identity(
    tokenizer_type: str | None, tokenizer_model: str | None, vocab_size: int, merge_file: str | None = None
) -> dict:
    """Type, path, vocabulary size and a CRC-32 of the vocabulary files (so a moved copy still matches):
    one file's CRC, or ``name:crc`` parts of a directory's files or of GPT-2's vocab.json and merges.txt
    (``merge_file``, whose path is then recorded too).

    Recorded in checkpoints' ``meta.json`` and beside preprocessed data (``data_record``).
    """
    crc = None
    if merge_file is not None:
        files = [(GPT2_FILES[0], tokenizer_model), (GPT2_FILES[1], merge_file)]
        crc = ",".join(f"{n}:{file_crc32(p)}" for n, p in files if p and os.path.isfile(p)) or None
    elif tokenizer_model and os.path.isfile(tokenizer_model):
        crc = file_crc32(tokenizer_model)
    elif tokenizer_model and os.path.isdir(tokenizer_model):
        paths = [(n, os.path.join(tokenizer_model, n)) for n in VOCAB_FILES]
        parts = [f"{n}:{file_crc32(p)}" for n, p in paths if os.path.isfile(p)]
        crc = ",".join(parts) or None
    model = os.path.abspath(tokenizer_model) if tokenizer_model else None
    identity = {"type": tokenizer_type, "model": model, "vocab_size": vocab_size, "crc32": crc}
    if merge_file is not None:
        identity["merge_file"] = os.path.abspath(merge_file)
    return identity


def same_vocabulary_files(crc_a: str | None, crc_b: str | None) -> bool:
    """Whether two ``tokenizer_identity`` CRCs name the same vocabulary: equal, or one file's bare CRC
    found among the other's ``name:crc`` parts (a SentencePiece model given as the file or inside its
    Hugging Face directory; GPT-2's vocab.json as recorded before its merges.txt was)."""
    if crc_a == crc_b:
        return True
    if not crc_a or not crc_b or (":" in crc_a) == (":" in crc_b):
        return False
    bare, parts = (crc_a, crc_b) if ":" not in crc_a else (crc_b, crc_a)
    return bare in {part.rpartition(":")[2] for part in parts.split(",")}


def describe_tokenizer(identity: dict) -> str:
    """``SentencePieceTokenizer /path/tok.model (32,000 ids, CRC-32 1a2b3c4d)`` for messages."""
    crc = f", CRC-32 {identity['crc32']}" if identity.get("crc32") else ""
    return f"{identity.get('type')} {identity.get('model')} ({identity.get('vocab_size'):,} ids{crc})"


def default_anchor_id(tokenizer: Tokenizer, remedy: str = "pass --anchor-token-id") -> int:
    """The anchor token: the tokenizer's BOS, else its EOS (SPEC section 1); ValueError ending with
    ``remedy`` when it has neither."""
    for token_id in (tokenizer.bos_id, tokenizer.eos_id):
        if token_id is not None:
            return token_id
    raise ValueError(f"the tokenizer has neither a BOS nor an EOS token to be the anchor: {remedy}")


def check_vocab_size(vocab_size: int) -> None:
    """A vocabulary to train has at least one piece (the corpus may ask for more: ``train_sentencepiece``)."""
    if vocab_size < 1:
        raise ValueError(f"--vocab-size {vocab_size}: must be positive")


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int, **kw) -> str:
    """Train a SentencePiece model offline on ``texts``; return the ``.model`` path.

    Defaults: unigram, unk=0, bos=1, eos=2, no pad, and ``hard_vocab_limit=False`` so that a small corpus
    gives a smaller vocabulary instead of an error. Keyword arguments override sentencepiece's trainer flags.
    A vocabulary too small for the corpus' characters, or no text at all, is a one-line ``ValueError``.
    """
    check_vocab_size(vocab_size)
    import sentencepiece

    options = dict(
        model_type="unigram",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        hard_vocab_limit=False,
        character_coverage=1.0,
        num_threads=1,
        minloglevel=2,
    )
    options.update(kw)
    directory = os.path.dirname(model_prefix)
    if directory:
        os.makedirs(directory, exist_ok=True)
    texts = iter(texts)
    first = next(texts, None)
    if first is None:
        raise ValueError("no text to train on")
    model = io.BytesIO()  # sentencepiece's own file writes ignore a full disk: the files are written here
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], texts), model_writer=model, vocab_size=vocab_size,
            **options,
        )
    except RuntimeError as error:  # sentencepiece's checks fail with "INTERNAL: file(line) [check] why"
        needed = re.search(r"smaller than required_chars\. \d+ vs (\d+)", str(error))
        if needed:
            raise ValueError(
                f"--vocab-size {vocab_size} is smaller than the {needed.group(1)} pieces this corpus needs "
                "(its characters and the special tokens)"
            ) from None
        raise ValueError(f"SentencePiece training failed: {str(error).strip().splitlines()[0]}") from None
    _write_sentencepiece_files(model_prefix, model.getvalue())
    return model_prefix + ".model"


def _write_sentencepiece_files(model_prefix: str, proto: bytes) -> None:
    """``PREFIX.model`` and ``PREFIX.vocab`` (sentencepiece's ``piece<TAB>score`` lines), synced under
    temporary names and renamed once both are written: a failed write (OSError naming the file, the errno
    and the free space) leaves neither name behind."""
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
    pieces = range(processor.get_piece_size())
    vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n" for i in pieces)
    files = {model_prefix + ".model": proto, model_prefix + ".vocab": vocab.encode()}
    temporary = {path: f"{path}.tmp{os.getpid()}" for path in files}
    path = ""
    try:
        for path, content in files.items():
            with open(temporary[path], "wb") as stream:
                stream.write(content)
                sync_and_close(stream)
    except OSError as err:
        for tmp in temporary.values():
            with contextlib.suppress(OSError):
                os.remove(tmp)
        raise OSError(f"writing {path} failed: {os_error_message(err, path)}") from None
    for path, tmp in temporary.items():
        os.replace(tmp, path)


def _optional_id(token_id: int) -> int | None:
    return None if token_id < 0 else token_id
