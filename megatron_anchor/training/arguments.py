"""Command-line flags of the trainer: Megatron's names and meanings (see ``megatron_flags`` for the table of
every Megatron flag), short errors, defaults in ``--help``. Imports neither torch nor megatron-core."""

from __future__ import annotations

import argparse
import difflib
import json
import sys

from megatron_anchor.data.position_modes import POSITION_MODES
from megatron_anchor.parallel.layout_names import CP_LAYOUTS
from megatron_anchor.training.megatron_flags import add_restated_args, refused_reason
from megatron_anchor.training.model_args import add_model_args


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every valued flag's default in ``--help`` (unless None or the help already states it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is argparse.SUPPRESS or action.nargs == 0 or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


class TrainerArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line each (no usage block), that names the reason for a
    refused Megatron flag and suggests the nearest known flag for a misspelt one."""

    def error(self, message: str):  # type: ignore[override]
        """Print ``prog: error: message`` and exit 2."""
        sys.stderr.write(f"{self.prog}: error: {message}\n(see --help)\n")
        sys.exit(2)

    def option_names(self) -> list[str]:
        """Every long option string the parser knows."""
        return [s for a in self._actions for s in a.option_strings if s.startswith("--")]

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """Parse after refusing unknown and refused flags, all of them at once, one line each."""
        argv = sys.argv[1:] if args is None else list(args)
        problems = flag_problems(argv, self.option_names())
        if problems:
            self.error("\n  ".join([f"{len(problems)} flag(s) not accepted:", *problems]))
        return super().parse_args(argv, namespace)


def flag_problems(argv: list[str], known: list[str]) -> list[str]:
    """One line per flag of ``argv`` that is refused (with the reason) or unknown (with a suggestion)."""
    known_set, problems = set(known), []
    for token in argv:
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        if name in known_set:
            continue
        reason = refused_reason(name)
        if reason is not None:
            problems.append(f"{name}: {reason}")
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        problems.append(f"{name}: unknown flag" + (f"; did you mean {close[0]}?" if close else ""))
    return problems


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-path",
        nargs="+",
        default=None,
        help="[weight] prefix ...: packed-anchor datasets, or Megatron-LM's plain ones read as they are",
    )
    g.add_argument("--mock-data", action="store_true", help="synthetic packed samples (tests, benchmarks)")
    g.add_argument("--split", default="969,30,1", help="train,valid,test proportions")
    g.add_argument(
        "--seq-length", type=int, required=True, help="S: input tokens per sample (files hold S+1)"
    )
    g.add_argument("--position-ids", choices=POSITION_MODES, default="global", help="RoPE positions")
    g.add_argument(
        "--reset-position-ids",
        dest="position_ids",
        action="store_const",
        const="reset",
        help="Megatron's name for --position-ids reset",
    )
    g.add_argument(
        "--mask-cross-doc-labels",
        "--eod-mask-loss",
        action="store_true",
        help="no loss on a label that starts the next document (the token after a document's EOD)",
    )
    g.add_argument(
        "--tokenizer-type",
        default=None,
        help="SentencePieceTokenizer, HuggingFaceTokenizer, or NullTokenizer (no tokenizer: --vocab-size)",
    )
    g.add_argument(
        "--tokenizer-model", default=None, help="SentencePiece .model file or HF tokenizer directory"
    )
    g.add_argument(
        "--vocab-size",
        type=int,
        default=None,
        help="vocabulary without a tokenizer; with one, the model's vocabulary (must hold every token id)",
    )
    g.add_argument(
        "--data-cache-path",
        default=None,
        help="directory for megatron-core's cached indices (plain datasets: default PREFIX/cache/)",
    )
    g.add_argument(
        "--no-data-shuffle",
        dest="data_shuffle",
        action="store_false",
        help="samples in file order: no seeded shuffle of documents or samples",
    )


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--micro-batch-size", type=int, default=1, help="samples per forward on a DP rank")
    g.add_argument("--global-batch-size", type=int, default=None, help="default: micro x data-parallel size")
    g.add_argument("--train-iters", type=int, default=None, help="optimizer steps (or --train-samples)")
    g.add_argument("--train-samples", type=int, default=None, help="samples to train on (or --train-iters)")
    g.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (Megatron requires it)")
    g.add_argument("--min-lr", type=float, default=0.0, help="learning rate at the end of the decay")
    g.add_argument(
        "--lr-decay-style",
        choices=("linear", "cosine", "constant"),
        default="linear",
        help="decay after warmup",
    )
    g.add_argument("--lr-decay-iters", type=int, default=None, help="default: --train-iters")
    g.add_argument("--lr-decay-samples", type=int, default=None, help="with --train-samples")
    g.add_argument("--lr-warmup-iters", type=int, default=0, help="linear warmup steps")
    g.add_argument("--lr-warmup-samples", type=int, default=0, help="with --train-samples")
    g.add_argument("--lr-warmup-fraction", type=float, default=None, help="warmup as a fraction of the decay")
    g.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on 1-D params)")
    g.add_argument("--adam-beta1", type=float, default=0.9, help="Adam beta1")
    g.add_argument("--adam-beta2", type=float, default=0.999, help="Adam beta2 (Llama recipes use 0.95)")
    g.add_argument("--adam-eps", type=float, default=1e-8, help="Adam epsilon")
    g.add_argument("--clip-grad", type=float, default=1.0, help="global gradient-norm clip; 0 disables")
    g.add_argument("--bf16", action="store_true", help="bf16 compute, fp32 master weights")
    g.add_argument("--seed", type=int, default=1234, help="initialisation and data order")
    g.add_argument(
        "--recompute-method",
        choices=("uniform", "block"),
        default=None,
        help="with --recompute-granularity full: uniform (every layer) or block (the first N layers)",
    )
    g.add_argument("--recompute-num-layers", type=int, default=None, help="uniform: 1; block: N")
    g.add_argument(
        "--manual-gc", action="store_true", help="disable Python's automatic GC; collect explicitly"
    )
    g.add_argument(
        "--manual-gc-interval", type=int, default=0, help="steps between collections (0: only at eval)"
    )
    g.add_argument(
        "--empty-unused-memory-level",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="1: empty the CUDA cache after each step; 2: also after evaluation",
    )
    g.add_argument(
        "--cross-entropy-chunk-size",
        type=int,
        default=0,
        metavar="TOKENS",
        help="run the output layer and the loss over this many sequence positions at a time (their logits: "
        "TOKENS x micro-batch x vocab/TP), recomputed in backward, so the [s, b, vocab/TP] logits and their "
        "fp32 softmax are never kept (0: off, megatron-core's whole-sequence loss)",
    )
    g.add_argument(
        "--grad-reduce-in-bf16",
        action="store_true",
        help="with --bf16: reduce gradients across data-parallel ranks in bf16 (default fp32)",
    )


def _parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("parallelism")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="TP")
    g.add_argument("--pipeline-model-parallel-size", type=int, default=1, help="1 only")
    g.add_argument("--context-parallel-size", type=int, default=1, help="CP")
    g.add_argument(
        "--cp-layout",
        choices=CP_LAYOUTS,
        default="balanced",
        help="which tokens each CP rank holds: 'balanced' gives every rank the same attention work from the "
        "documents (no padding); 'megatron' is megatron-core's 2*cp chunk layout",
    )
    g.add_argument(
        "--use-distributed-optimizer",
        action="store_true",
        help="shard gradients and optimizer state over data parallel ranks (FSDP2, ZeRO-2-like)",
    )
    g.add_argument(
        "--sequence-parallel",
        action="store_true",
        help="with TP: shard norms, residuals and embeddings along the sequence within each TP group",
    )


def _checkpoint_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("checkpoints")
    g.add_argument("--save", default=None, help="checkpoint directory to write")
    g.add_argument(
        "--load",
        default=None,
        help="checkpoint directory to resume or start from (this project's, or Megatron-LM torch_dist)",
    )
    g.add_argument(
        "--pretrained-checkpoint",
        default=None,
        help="weights to start from (at step 0) while --load holds no checkpoint yet; resume --load after",
    )
    g.add_argument("--save-interval", type=int, default=None, help="steps between checkpoints")


def _resume_args(p: argparse.ArgumentParser) -> None:
    """--finetune, --no-load-optim/rng, --override-opt-param-scheduler, timeouts and exit conditions."""
    g = p.add_argument_group("resume and fault tolerance")
    g.add_argument(
        "--finetune",
        action="store_true",
        help="load only the model weights of --load and start at step 0 with a new optimizer, RNG and "
        "schedule (e.g. the next stage of a context extension)",
    )
    g.add_argument("--no-load-optim", action="store_true", help="resume without the optimizer state")
    g.add_argument("--no-load-rng", action="store_true", help="resume with RNG states from --seed")
    g.add_argument(
        "--override-opt-param-scheduler",
        action="store_true",
        help="on resume, use the LR schedule flags even where they differ from the checkpoint's",
    )
    g.add_argument(
        "--distributed-timeout-minutes",
        type=float,
        default=10.0,
        help="a collective that waits longer (a stalled or dead rank) ends the job with an error; "
        "fractions allowed (0.1 = 6 s); default 10 (Megatron's)",
    )
    g.add_argument(
        "--exit-signal-handler",
        action="store_true",
        help="on SIGTERM (e.g. a scheduler's preemption), finish the current step, save to --save, exit 0",
    )
    g.add_argument(
        "--exit-duration-in-mins",
        type=float,
        default=None,
        help="after this many minutes of the job, finish the step, save and exit 0",
    )
    g.add_argument(
        "--exit-interval", type=int, default=None, help="save and exit 0 once the step divides by this"
    )


def _logging_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evaluation and logging")
    g.add_argument("--eval-interval", type=int, default=None, help="steps between validations")
    g.add_argument("--eval-iters", type=int, default=100, help="global batches per validation")
    g.add_argument("--log-interval", type=int, default=100, help="steps per log line (the first step too)")
    g.add_argument("--log-throughput", action="store_true", help="no effect: throughput is always logged")
    g.add_argument("--log-jsonl", default=None, help="append one JSON object per log line")
    g.add_argument("--tensorboard-dir", default=None, help="TensorBoard event files (Megatron's tags)")
    g.add_argument("--wandb-project", default=None, help="log to Weights & Biases (needs wandb)")
    g.add_argument("--wandb-exp-name", default=None, help="the W&B run name")
    g.add_argument("--wandb-save-dir", default=None, help="W&B files; default: SAVE/wandb")
    g.add_argument("--wandb-entity", default=None, help="the W&B team or user")
    g.add_argument("--peak-tflops", type=float, default=None, help="per-GPU peak for MFU; default: GPU table")
    g.add_argument("--profile", action="store_true", help="profile steps [start, end) on --profile-ranks")
    g.add_argument("--use-pytorch-profiler", action="store_true", help="torch.profiler instead of nsys")
    g.add_argument("--profile-step-start", type=int, default=10, help="first profiled step (0-based)")
    g.add_argument("--profile-step-end", type=int, default=12, help="profiling stops before this step")
    g.add_argument("--profile-ranks", type=int, nargs="+", default=[0], help="global ranks to profile")
    g.add_argument("--dry-run", action="store_true", help="check flags, tokenizer, data, paths; then exit")


def build_parser() -> TrainerArgumentParser:
    """The pretraining argument parser."""
    p = TrainerArgumentParser(
        prog="python -m megatron_anchor.pretrain",
        usage="[torchrun ...] %(prog)s --num-layers N --hidden-size H --num-attention-heads A "
        "--seq-length S (--train-iters I | --train-samples N) (--data-path ... | --mock-data) [flags]",
        description="AnchorAttention long-context pretraining on megatron-core, with Megatron-LM's flags.",
        epilog="Megatron-LM flags for features this project lacks (FP8, fp16, pipeline stages, ...) stop the "
        "run with their reason; the README's flag table lists every Megatron flag.",
        formatter_class=_HelpFormatter,
        allow_abbrev=False,
    )
    for add in (
        add_model_args,  # with the RoPE flags
        _data_args,
        _train_args,
        _parallel_args,
        _checkpoint_args,
        _resume_args,
        _logging_args,
        add_restated_args,
    ):
        add(p)
    return p


def parse_args(argv: list[str] | None, world_size: int) -> argparse.Namespace:
    """Parse and validate; an error prints one line naming the flag and exits 2."""
    from megatron_anchor.training.validation import validate_args

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return validate_args(args, world_size)
    except ValueError as err:
        parser.error(str(err))
        raise  # unreachable: parser.error exits


def format_config(args: argparse.Namespace) -> str:
    """The resolved configuration as sorted JSON (written at start-up, printed by --dry-run)."""
    return json.dumps({k: v for k, v in sorted(vars(args).items())}, indent=1, default=str)
