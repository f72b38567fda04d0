r"""Turn a jsonl corpus into megatron-core indexed datasets, optionally packed into anchored samples.

Megatron-LM's flags and file naming (``{output_prefix}_{key}_document.bin/.idx``), plus anchor packing:

    python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/corpus \
        --tokenizer-type SentencePieceTokenizer --tokenizer-model tok.model --workers 8 \
        --seq-length 8192 --pack best-fit

Without --seq-length the output is Megatron-LM's plain format (the same bytes as its own tool), which the
trainer also reads as it is. Beside each .bin/.idx pair, {prefix}.meta.json records the tokenizer and
checksums tying the two files together. Inputs may be gzip-compressed (recognised by content, whatever the
name). A run writes complete outputs or none: the output prefix is locked while it is written (a second
run to it is refused), files are synced to disk before they take their final names, and a dead worker,
damaged input, a full disk or a run that would write no documents ends with a one-line error and exit
status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron_anchor.data.preprocess import PreprocessConfig, PreprocessError, run_preprocess  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    group = parser.add_argument_group("input data")
    group.add_argument(
        "--input", required=True, help="a .jsonl / .jsonl.gz file, a glob, or a directory of them"
    )
    group.add_argument("--json-keys", nargs="+", default=["text"], help="keys to extract from each record")
    group.add_argument(
        "--split-sentences", action="store_true", help="split documents into sentences (punkt)"
    )
    group.add_argument("--keep-newlines", action="store_true", help="keep newlines between sentences")
    group.add_argument("--skip-bad-records", action="store_true", help="skip and count bad records, not fail")
    group = parser.add_argument_group("tokenization")
    group.add_argument(
        "--tokenizer-type", required=True, choices=["SentencePieceTokenizer", "HuggingFaceTokenizer"]
    )
    group.add_argument(
        "--tokenizer-model", required=True, help="a SentencePiece .model, or a local HF directory"
    )
    group.add_argument("--append-eod", action="store_true", help="append an EOD (EOS) token to each document")
    group.add_argument("--lang", default="english", help="punkt language for --split-sentences")
    group = parser.add_argument_group("anchor packing")
    group.add_argument("--seq-length", type=int, default=None, help="S: samples are S+1 tokens, anchor first")
    group.add_argument(
        "--pack",
        choices=["none", "greedy", "best-fit"],
        default=None,
        help="default: greedy with --seq-length, none without",
    )
    group.add_argument(
        "--anchor-token-id", type=int, default=None, help="default: the tokenizer's BOS, else EOS"
    )
    group.add_argument(
        "--partial-sample",
        choices=["pad", "drop"],
        default="pad",
        help="the final partial sample: kept (padded and loss-masked when read) or dropped",
    )
    group = parser.add_argument_group("output data")
    group.add_argument("--output-prefix", required=True, help="path prefix of the output files")
    group = parser.add_argument_group("runtime")
    group.add_argument("--workers", type=int, default=1, help="tokenizer processes")
    group.add_argument("--log-interval", type=int, default=1000, help="records between progress updates")
    group.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the tool; print the summary (stdout) or the error (stderr)."""
    args = parse_args(argv)
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    config = PreprocessConfig(
        input=args.input,
        output_prefix=args.output_prefix,
        tokenizer_type=args.tokenizer_type,
        tokenizer_model=args.tokenizer_model,
        json_keys=tuple(args.json_keys),
        append_eod=args.append_eod,
        split_sentences=args.split_sentences,
        lang=args.lang,
        keep_newlines=args.keep_newlines,
        workers=args.workers,
        log_interval=args.log_interval,
        seq_length=args.seq_length,
        pack=args.pack,
        anchor_token_id=args.anchor_token_id,
        partial_sample=args.partial_sample,
        skip_bad_records=args.skip_bad_records,
        progress=not args.no_progress,
    )
    try:
        summary = run_preprocess(config)
    except (PreprocessError, OSError) as error:  # input, flags, workers; files (missing, corrupt, full)
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
