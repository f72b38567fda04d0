"""Convert Llama-2/3/3.1, Qwen2/2.5 and Mistral checkpoints between Hugging Face and megatron_anchor.

Import (a local HF directory of safetensors -> ``SAVE/iter_0000000`` + ``SAVE/latest``), for an extension
run with a new RoPE base; prints the matching trainer flags::

    python tools/convert_hf_checkpoint.py import --hf-dir Llama-2-7b-hf --save ckpt/llama2-7b-tp2 \\
        --tensor-model-parallel-size 2 --rotary-base 5e6

Export (a checkpoint, converted or trained -> a HF directory transformers loads)::

    python tools/convert_hf_checkpoint.py export --load runs/llama2-64k --hf-dir Llama-2-7b-64k \\
        --dtype bfloat16

The checkpoint records the model, its RoPE, the source model's config and the tokenizer it was trained with:
export needs no other flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Only the flags load here: a conversion imports torch and safetensors once parsed, never megatron-core.
from megatron_anchor.rope.args import parse_rope_scaling  # noqa: E402

if TYPE_CHECKING:
    from megatron_anchor.convert.hf_checkpoint import RopeOverride

DTYPES = ("float32", "bfloat16", "float16")


def _add_rope_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rotary-base", type=float, default=None, help="replace the model's rope_theta")
    p.add_argument(
        "--rope-scaling", default=None,
        help="replace the model's rope_scaling: JSON (HF or megatron_anchor form), a JSON file, or 'none'",
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line: ``import`` and ``export`` subcommands."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    imp = sub.add_parser("import", help="HF directory -> megatron_anchor checkpoint")
    imp.add_argument("--hf-dir", required=True, help="local HF model directory (config.json, safetensors)")
    imp.add_argument("--save", required=True, help="checkpoint directory to write")
    imp.add_argument("--tensor-model-parallel-size", type=int, default=1)
    imp.add_argument("--make-vocab-size-divisible-by", type=int, default=128)
    imp.add_argument("--dtype", choices=DTYPES, default=None, help="stored dtype (default: the source's)")
    _add_rope_flags(imp)
    exp = sub.add_parser("export", help="megatron_anchor checkpoint -> HF directory")
    exp.add_argument("--load", required=True, help="checkpoint directory (with 'latest') or iter_* directory")
    exp.add_argument("--hf-dir", required=True, help="HF directory to write")
    exp.add_argument(
        "--hf-source", default=None,
        help="converted checkpoint or original HF directory: config and tokenizer files for a checkpoint "
        "that does not record them",
    )
    exp.add_argument("--dtype", choices=DTYPES, default=None, help="default: the checkpoint's dtype")
    exp.add_argument(
        "--max-position-embeddings", type=int, default=None,
        help="default: the longer of the source model's context and the trained --seq-length",
    )
    exp.add_argument("--max-shard-size-gb", type=float, default=5.0)
    _add_rope_flags(exp)
    for p in (imp, exp):
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def rope_override(args: argparse.Namespace) -> RopeOverride | None:
    """The --rotary-base / --rope-scaling overrides, or None when neither is given."""
    from megatron_anchor.convert.hf_checkpoint import KEEP, RopeOverride

    if args.rotary_base is None and args.rope_scaling is None:
        return None
    if args.rope_scaling is None:
        scaling = KEEP
    elif args.rope_scaling.strip().lower() == "none":
        scaling = None
    else:
        scaling = parse_rope_scaling(args.rope_scaling)
    return RopeOverride(args.rotary_base, scaling)


def tokenizer_flags(hf_dir: str) -> list[str]:
    """The trainer's tokenizer flags for a HF directory that holds tokenizer files (else none)."""
    from megatron_anchor.data.tokenizers import has_hf_tokenizer

    if not has_hf_tokenizer(hf_dir):
        return []
    return ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", hf_dir]


def main(argv: list[str] | None = None) -> int:
    """Run one conversion; errors are printed as one line naming the file, tensor or flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from megatron_anchor.convert.hf_checkpoint import export_hf_checkpoint, import_hf_checkpoint
    from megatron_anchor.convert.hf_config import format_flags, trainer_flags

    try:
        rope = rope_override(args)
        if args.command == "import":
            tp = args.tensor_model_parallel_size
            meta = import_hf_checkpoint(
                args.hf_dir, args.save, tp, make_vocab_size_divisible_by=args.make_vocab_size_divisible_by,
                dtype=args.dtype, rope=rope, progress=not args.quiet,
            )
            flags = trainer_flags(meta["model"], meta["rope"], tp) + tokenizer_flags(args.hf_dir)
            print("trainer flags for this checkpoint:\n    " + format_flags(flags + ["--load", args.save]))
            if "--tokenizer-model" not in flags:
                print(f"note: {args.hf_dir} has no tokenizer files: add --tokenizer-type/--tokenizer-model")
        else:
            files = export_hf_checkpoint(
                args.load, args.hf_dir, hf_source=args.hf_source, dtype=args.dtype, rope=rope,
                max_position_embeddings=args.max_position_embeddings,
                max_shard_bytes=int(args.max_shard_size_gb * 2**30), progress=not args.quiet,
            )
            print(f"wrote {len(files)} files to {args.hf_dir}")
    except (ValueError, KeyError, OSError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
