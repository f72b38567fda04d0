r"""Train a SentencePiece tokenizer offline on the texts of a jsonl corpus (for small or new corpora).

    python tools/train_tokenizer.py --input examples/data/sample_corpus.jsonl --model-prefix runs/tok \
        --vocab-size 2000

The input is read as ``tools/preprocess_data.py`` reads it: a .jsonl or .jsonl.gz file (gzip known by its
bytes), a glob, or a directory of them. Bad input, a bad flag or an output that cannot be written ends with
a one-line error and exit status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_anchor._files import output_problem  # noqa: E402
from megatron_anchor.data.jsonl import read_texts  # noqa: E402
from megatron_anchor.data.tokenizers import check_vocab_size, train_sentencepiece  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--input", required=True, help="a .jsonl / .jsonl.gz file, a glob, or a directory")
    parser.add_argument("--json-key", default="text", help="the key of each record's text")
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=2000, help="pieces (a small corpus may give fewer)")
    return parser.parse_args(argv)


def check_output(model_prefix: str) -> None:
    """The directory of ``--model-prefix`` can be created and written (``output_problem``: a probe write,
    nothing created)."""
    problem = output_problem("--model-prefix", os.path.dirname(os.path.abspath(model_prefix)))
    if problem:
        raise OSError(problem)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, train, print the model path and vocabulary size; one line on stderr on failure."""
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        check_vocab_size(args.vocab_size)
        check_output(args.model_prefix)
        texts = list(read_texts(args.input, args.json_key))
        if not any(text.strip() for text in texts):
            raise ValueError(f"--input {args.input}: no text under key {args.json_key!r} to train on")
        os.makedirs(os.path.dirname(os.path.abspath(args.model_prefix)), exist_ok=True)
        path = train_sentencepiece(texts, args.model_prefix, args.vocab_size)
    except (ValueError, OSError) as error:  # input, flags, output (FileNotFoundError for a missing input)
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"trained {path} on {len(texts)} records in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
