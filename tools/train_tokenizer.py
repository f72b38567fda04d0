"""Train a SentencePiece tokenizer offline on the texts of a jsonl corpus (for small or new corpora).

    python tools/train_tokenizer.py --input examples/data/sample_corpus.jsonl --model-prefix runs/tok \
        --vocab-size 2000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_anchor.data import train_sentencepiece  # noqa: E402


def read_texts(path: str, key: str) -> list[str]:
    """Every record's ``key`` field; a clear error naming the file and line otherwise."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                texts.append(json.loads(line)[key])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise SystemExit(f"{path}:{line_no}: cannot read field {key!r}: {err}") from err
    return texts


def main(argv: list[str] | None = None) -> None:
    """Parse flags, train, print the model path and vocabulary size."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True, help="a .jsonl file")
    parser.add_argument("--json-key", default="text")
    parser.add_argument("--model-prefix", required=True, help="writes PREFIX.model and PREFIX.vocab")
    parser.add_argument("--vocab-size", type=int, default=2000)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    texts = read_texts(args.input, args.json_key)
    os.makedirs(os.path.dirname(os.path.abspath(args.model_prefix)), exist_ok=True)
    path = train_sentencepiece(texts, args.model_prefix, args.vocab_size)
    print(f"trained {path} on {len(texts)} records in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
