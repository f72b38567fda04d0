"""Megatron-LM's training flags and what this trainer does with each: the one table behind the parser's
restated and refused flags, ``--help`` and the README's flag table.

Kinds:
- ``accepted``: the trainer has the flag with Megatron's meaning (the note says where a detail differs);
- ``restated``: the flag describes what this project always builds, or asks for a Megatron performance
  switch that has no counterpart here; it is parsed, checked (a value that contradicts this build is an
  error naming the flag) and listed once at start-up;
- ``refused``: a feature this project does not have: the flag stops the run with its one-line reason;
- ``project``: this project's own flag (Megatron has no such flag).

A ``flag`` ending in ``*`` is a prefix (``--fp8-*`` is every flag starting with ``--fp8-``). Torch-free.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

ACCEPTED, RESTATED, REFUSED, PROJECT = "accepted", "restated", "refused", "project"
KINDS = (ACCEPTED, RESTATED, REFUSED, PROJECT)

Check = Callable[[object, argparse.Namespace], "str | None"]


@dataclass(frozen=True)
class Flag:
    """One flag: its kind, a one-line note (the reason, for a refused flag) and, when restated, how it
    parses (argparse keywords) and which values agree with this build (``check`` returns an error)."""

    flag: str
    kind: str
    note: str
    parse: dict = field(default_factory=dict)
    check: Check | None = None

    @property
    def dest(self) -> str:
        """The argparse attribute name of a restated flag."""
        return self.parse.get("dest") or self.flag.lstrip("-").replace("-", "_")


def _equals(expected, why: str) -> Check:
    return lambda value, args: None if value == expected else f"{value}: {why}"


def _zero(value, args) -> str | None:
    return None if value == 0 else f"{value}: there is no dropout in this model; only 0"


def _kv_channels(value, args) -> str | None:
    head_dim = args.hidden_size // args.num_attention_heads
    if value == head_dim:
        return None
    return f"{value}: channels per head are --hidden-size / --num-attention-heads = {head_dim} here"


def _max_positions(value, args) -> str | None:
    if value >= args.seq_length:
        return None
    return f"{value} is below --seq-length {args.seq_length} (Megatron refuses this too)"


def _untie(value, args) -> str | None:
    if args.untie_embeddings_and_output_weights:
        return None
    return "contradicts --share-embeddings-and-output-weights"


def _mask_reset(value, args) -> str | None:
    if args.attention_mode != "causal":
        return None
    return "contradicts --attention-mode causal (documents would see each other): use intra_doc or anchor"


def _ckpt_format(value, args) -> str | None:
    if value in ("torch_dist", "torch_dcp"):
        return None
    return f"{value}: checkpoints here are torch.distributed.checkpoint directories (torch_dist/torch_dcp)"


_FLAG = {"action": "store_true"}
_INT, _FLOAT = {"type": int}, {"type": float}

FLAGS: tuple[Flag, ...] = (
    # Model shape and numerics.
    Flag("--num-layers", ACCEPTED, ""),
    Flag("--hidden-size", ACCEPTED, ""),
    Flag("--ffn-hidden-size", ACCEPTED, "default 4 x hidden, or Megatron's SwiGLU size with --swiglu"),
    Flag("--num-attention-heads", ACCEPTED, ""),
    Flag("--num-query-groups", ACCEPTED, "GQA follows it; --group-query-attention is implied"),
    Flag("--add-qkv-bias", ACCEPTED, "Qwen2-style bias on the qkv projection"),
    Flag("--init-method-std", ACCEPTED, ""),
    Flag("--norm-epsilon", ACCEPTED, ""),
    Flag("--make-vocab-size-divisible-by", ACCEPTED, ""),
    Flag("--vocab-size", ACCEPTED, "with a tokenizer, the model's vocabulary (it must hold every token id)"),
    Flag("--rotary-base", ACCEPTED, "a float (Megatron: an int)"),
    Flag("--rotary-percent", ACCEPTED, ""),
    Flag("--rotary-interleaved", ACCEPTED, ""),
    Flag("--rotary-seq-len-interpolation-factor", ACCEPTED, "position interpolation (a float)"),
    Flag("--recompute-granularity", ACCEPTED, "full: torch's checkpoint per layer; selective: attention"),
    Flag("--recompute-method", ACCEPTED, "uniform (1 layer per checkpoint) or block (the first N layers)"),
    Flag("--recompute-num-layers", ACCEPTED, "uniform: 1 only; block: how many leading layers"),
    Flag("--transformer-impl", ACCEPTED, "default: Transformer Engine's layers when TE imports, else local"),
    Flag("--bf16", ACCEPTED, "bf16 compute, fp32 master weights (FSDP2: bf16 parameters, fp32 reduction)"),
    # Data and tokenizer.
    Flag("--data-path", ACCEPTED, "packed anchor datasets, or Megatron-LM's own read as they are; blends"),
    Flag("--split", ACCEPTED, ""),
    Flag("--seq-length", ACCEPTED, "a sample is the anchor + S tokens (S+1, as Megatron's)"),
    Flag("--mock-data", ACCEPTED, "synthetic packed samples"),
    Flag("--tokenizer-type", ACCEPTED, "SentencePieceTokenizer, HuggingFaceTokenizer or NullTokenizer"),
    Flag("--tokenizer-model", ACCEPTED, ""),
    Flag("--data-cache-path", ACCEPTED, "megatron-core's index cache (plain data: PREFIX/cache/ by default)"),
    Flag("--eod-mask-loss", ACCEPTED, "= --mask-cross-doc-labels: no loss on a label that starts a document"),
    Flag("--reset-position-ids", ACCEPTED, "= --position-ids reset: each document counts 1, 2, ..."),
    # Training schedule and optimizer.
    Flag("--micro-batch-size", ACCEPTED, ""),
    Flag("--global-batch-size", ACCEPTED, ""),
    Flag("--train-iters", ACCEPTED, ""),
    Flag("--train-samples", ACCEPTED, "converted to iterations: samples // global batch"),
    Flag("--lr", ACCEPTED, "default 3e-4 (Megatron has none)"),
    Flag("--min-lr", ACCEPTED, ""),
    Flag("--lr-decay-style", ACCEPTED, "linear (default), cosine or constant"),
    Flag("--lr-decay-iters", ACCEPTED, ""),
    Flag("--lr-decay-samples", ACCEPTED, "with --train-samples; converted to iterations"),
    Flag("--lr-warmup-iters", ACCEPTED, ""),
    Flag("--lr-warmup-samples", ACCEPTED, "with --train-samples; converted to iterations"),
    Flag("--lr-warmup-fraction", ACCEPTED, "of the decay iterations, rounded to whole iterations"),
    Flag("--weight-decay", ACCEPTED, ""),
    Flag("--adam-beta1", ACCEPTED, ""),
    Flag("--adam-beta2", ACCEPTED, ""),
    Flag("--adam-eps", ACCEPTED, ""),
    Flag("--clip-grad", ACCEPTED, ""),
    Flag("--seed", ACCEPTED, ""),
    Flag("--exit-interval", ACCEPTED, "saves (with --save), then stops at the first step divisible by it"),
    Flag("--manual-gc", ACCEPTED, ""),
    Flag("--manual-gc-interval", ACCEPTED, ""),
    Flag("--empty-unused-memory-level", ACCEPTED, "1: empty the CUDA cache after steps; 2: after eval too"),
    # Parallelism.
    Flag("--tensor-model-parallel-size", ACCEPTED, ""),
    Flag("--context-parallel-size", ACCEPTED, "the anchor attention's own ring over the CP group"),
    Flag("--pipeline-model-parallel-size", ACCEPTED, "1 only: pipeline parallelism is not implemented"),
    Flag("--use-distributed-optimizer", ACCEPTED, "FSDP2 sharding gradients and optimizer state (ZeRO-2)"),
    Flag("--sequence-parallel", ACCEPTED, ""),
    Flag("--grad-reduce-in-bf16", ACCEPTED, ""),
    # Checkpoints.
    Flag("--save", ACCEPTED, "DCP directories of this project; writes latest_checkpointed_iteration.txt too"),
    Flag("--load", ACCEPTED, "also reads Megatron-LM torch_dist checkpoints (as starting weights)"),
    Flag("--pretrained-checkpoint", ACCEPTED, "weights at step 0 while --load holds no checkpoint"),
    Flag("--save-interval", ACCEPTED, ""),
    Flag("--finetune", ACCEPTED, ""),
    Flag("--no-load-optim", ACCEPTED, ""),
    Flag("--no-load-rng", ACCEPTED, ""),
    Flag("--override-opt-param-scheduler", ACCEPTED, ""),
    Flag("--distributed-timeout-minutes", ACCEPTED, ""),
    Flag("--exit-signal-handler", ACCEPTED, ""),
    Flag("--exit-duration-in-mins", ACCEPTED, ""),
    # Evaluation and logging.
    Flag("--eval-interval", ACCEPTED, ""),
    Flag("--eval-iters", ACCEPTED, ""),
    Flag("--log-interval", ACCEPTED, "the first step is logged too, as Megatron does"),
    Flag("--log-throughput", ACCEPTED, "throughput (TFLOP/s/GPU) is always logged"),
    Flag("--tensorboard-dir", ACCEPTED, "Megatron's tag names ('lm loss', 'learning-rate', ...)"),
    Flag("--wandb-project", ACCEPTED, "needs the wandb package; WANDB_MODE=offline works offline"),
    Flag("--wandb-exp-name", ACCEPTED, ""),
    Flag("--wandb-save-dir", ACCEPTED, "default: SAVE/wandb, as Megatron"),
    Flag("--wandb-entity", ACCEPTED, ""),
    Flag("--profile", ACCEPTED, "nsys through the CUDA profiler API, or torch's with --use-pytorch-profiler"),
    Flag("--use-pytorch-profiler", ACCEPTED, "traces under --tensorboard-dir (else the log directory)"),
    Flag("--profile-step-start", ACCEPTED, ""),
    Flag("--profile-step-end", ACCEPTED, ""),
    Flag("--profile-ranks", ACCEPTED, ""),
    # Restated: what this project always builds.
    Flag("--use-mcore-models", RESTATED, "the model is megatron-core's GPTModel", _FLAG),
    Flag("--group-query-attention", RESTATED, "GQA follows --num-query-groups", _FLAG),
    Flag("--kv-channels", RESTATED, "must equal hidden / heads", _INT, _kv_channels),
    Flag("--max-position-embeddings", RESTATED, "must be >= --seq-length (no table)", _INT, _max_positions),
    Flag(
        "--position-embedding-type", RESTATED, "rope only: fp32 RoPE inside the attention",
        {"choices": ("learned_absolute", "rope", "mrope", "relative", "none")},
        _equals("rope", "this model applies RoPE (fp32) inside the attention; only rope"),
    ),
    Flag("--no-position-embedding", RESTATED, "there is no learned absolute position embedding", _FLAG),
    Flag("--swiglu", RESTATED, "the MLP is SwiGLU (the flag also picks Megatron's SwiGLU FFN size)", _FLAG),
    Flag(
        "--normalization", RESTATED, "RMSNorm only", {"choices": ("LayerNorm", "RMSNorm")},
        _equals("RMSNorm", "the layers use RMSNorm (Llama family); only RMSNorm"),
    ),
    Flag(
        "--untie-embeddings-and-output-weights", RESTATED, "untied is the default here",
        {**_FLAG, "dest": "megatron_untie"}, _untie,  # its own dest: the model's field is the tie flag's
    ),
    Flag("--disable-bias-linear", RESTATED, "no linear biases, given or not (qkv: --add-qkv-bias)", _FLAG),
    Flag("--attention-dropout", RESTATED, "0 only (no dropout; Megatron's default is 0.1)", _FLOAT, _zero),
    Flag("--hidden-dropout", RESTATED, "0 only (no dropout; Megatron's default is 0.1)", _FLOAT, _zero),
    Flag("--attention-softmax-in-fp32", RESTATED, "the anchor attention's softmax is fp32 always", _FLAG),
    Flag("--use-flash-attn", RESTATED, "the anchor attention picks its kernel itself", _FLAG),
    Flag(
        "--attention-backend", RESTATED, "the anchor attention picks its kernel itself",
        {"choices": ("auto", "flash", "fused", "unfused", "local")},
    ),
    Flag("--reset-attention-mask", RESTATED, "documents never see each other (anchor, intra_doc)", _FLAG,
         _mask_reset),
    Flag("--calculate-per-token-loss", RESTATED, "the loss is the global batch's token mean", _FLAG),
    Flag("--ckpt-format", RESTATED, "torch_dist or torch_dcp: this project's DCP layout", {}, _ckpt_format),
    Flag("--optimizer", RESTATED, "adam only (AdamW, as Megatron's adam)", {"choices": ("adam", "sgd")},
         _equals("adam", "the optimizer is AdamW; only adam")),
    Flag("--no-create-attention-mask-in-dataloader", RESTATED, "no dense masks: document ids", _FLAG),
    Flag("--overlap-grad-reduce", RESTATED, "DDP/FSDP2 reduce gradients during backward", _FLAG),
    Flag("--overlap-param-gather", RESTATED, "FSDP2 prefetches its all-gathers", _FLAG),
    Flag("--no-gradient-accumulation-fusion", RESTATED, "megatron-core's fusions are off", _FLAG),
    Flag("--no-masked-softmax-fusion", RESTATED, "megatron-core's fusions are off", _FLAG),
    Flag("--cross-entropy-loss-fusion", RESTATED, "no effect: megatron-core's vocab-parallel loss", _FLAG),
    Flag("--num-workers", RESTATED, "no effect: samples are read in the training process", _INT),
    Flag("--no-mmap-bin-files", RESTATED, "no effect: .bin files are memory-mapped", _FLAG),
    Flag("--tiktoken-pattern", RESTATED, "no effect: only Megatron's TikTokenizer reads it", {}),
    # Refused: features this project does not have.
    Flag("--fp16", REFUSED, "fp16 needs loss scaling, which is not implemented: use --bf16"),
    Flag("--fp8-*", REFUSED, "FP8 training is not implemented: use --bf16"),
    Flag("--apply-layernorm-1p", REFUSED, "zero-centred norm weights are not implemented"),
    Flag("--decoupled-lr", REFUSED, "one learning rate for every parameter; no separate embedding LR"),
    Flag("--decoupled-min-lr", REFUSED, "one learning rate for every parameter; no separate embedding LR"),
    Flag("--rampup-batch-size", REFUSED, "the global batch is fixed (data position = step x batch)"),
    Flag("--step-batch-size-schedule", REFUSED, "the global batch is fixed (data position = step x batch)"),
    Flag("--tp-comm-overlap", REFUSED, "needs Transformer Engine's userbuffers, which are not wired here"),
    Flag("--num-layers-per-virtual-pipeline-stage", REFUSED, "pipeline parallelism is not implemented"),
    Flag("--virtual-pipeline-model-parallel-size", REFUSED, "pipeline parallelism is not implemented"),
    Flag("--vocab-file", REFUSED, "GPT-2 BPE files: use HuggingFaceTokenizer with a directory"),
    Flag("--merge-file", REFUSED, "GPT-2 BPE files: use HuggingFaceTokenizer with a directory"),
    # This project's own flags.
    Flag("--attention-mode", PROJECT, "causal | intra_doc | anchor (default)"),
    Flag("--position-ids", PROJECT, "global (default) | reset"),
    Flag("--mask-cross-doc-labels", PROJECT, "no loss on a label that starts the next document"),
    Flag("--no-data-shuffle", PROJECT, "samples in file order (no seeded shuffle of documents or samples)"),
    Flag("--cp-layout", PROJECT, "balanced (default) | megatron: how a sample's tokens spread over CP"),
    Flag("--cross-entropy-chunk-size", PROJECT, "output layer + loss in recomputed chunks: no logits kept"),
    Flag("--rope-scaling", PROJECT, "YaRN, Llama 3.1, NTK, LongRoPE, DPRoPE ... as JSON or a file"),
    Flag("--share-embeddings-and-output-weights", PROJECT, "tie input and output embeddings"),
    Flag("--log-jsonl", PROJECT, "one JSON object per log line"),
    Flag("--peak-tflops", PROJECT, "per-GPU peak for MFU (default: known H100/H200/A100 bf16 peaks)"),
    Flag("--dry-run", PROJECT, "check flags, tokenizer, data and paths; print the configuration; exit"),
)

BY_FLAG = {f.flag: f for f in FLAGS}
RESTATED_FLAGS = tuple(f for f in FLAGS if f.kind == RESTATED)


def lookup(flag: str) -> Flag | None:
    """The table's row for ``flag`` (an exact row first, else a ``*`` prefix row), or None."""
    if flag in BY_FLAG:
        return BY_FLAG[flag]
    for row in FLAGS:
        if row.flag.endswith("*") and flag.startswith(row.flag[:-1]):
            return row
    return None


def add_restated_args(parser: argparse.ArgumentParser) -> None:
    """The restated flags, each parsed only when given (``argparse.SUPPRESS`` default)."""
    group = parser.add_argument_group(
        "Megatron flags that restate this build (checked, listed once at start-up)"
    )
    for row in RESTATED_FLAGS:
        group.add_argument(row.flag, default=argparse.SUPPRESS, help=row.note, **row.parse)


def check_restated(args: argparse.Namespace) -> list[str]:
    """The restated flags given, as ``--flag value`` texts; raises ValueError naming one that conflicts."""
    given = []
    for row in RESTATED_FLAGS:
        if not hasattr(args, row.dest):
            continue
        value = getattr(args, row.dest)
        problem = row.check(value, args) if row.check else None
        if problem:
            raise ValueError(f"{row.flag} {problem}")
        given.append(row.flag if value is True else f"{row.flag} {value}")
    return given


def refused_reason(flag: str) -> str | None:
    """Why ``flag`` is refused, or None when it is not a refused Megatron flag."""
    row = lookup(flag)
    return row.note if row is not None and row.kind == REFUSED else None


def markdown_table() -> str:
    """The README's table of every flag above, grouped by kind."""
    lines = ["| flag | here | note |", "|---|---|---|"]
    for kind in KINDS:
        for row in FLAGS:
            if row.kind == kind:
                name = row.flag.replace("*", "\\*")
                lines.append(f"| `{name}` | {kind} | {row.note or 'as in Megatron-LM'} |")
    return "\n".join(lines)


TABLE_START, TABLE_END = "<!-- megatron-flags-table:start -->", "<!-- megatron-flags-table:end -->"


def with_table(readme: str) -> str:
    """``readme`` with the text between the table markers replaced by ``markdown_table()``."""
    pattern = re.compile(re.escape(TABLE_START) + ".*?" + re.escape(TABLE_END), re.DOTALL)
    if not pattern.search(readme):
        raise ValueError(f"no {TABLE_START} ... {TABLE_END} markers")
    return pattern.sub(lambda _: f"{TABLE_START}\n{markdown_table()}\n{TABLE_END}", readme)


if __name__ == "__main__":  # python -m megatron_anchor.training.megatron_flags README.md
    with open(sys.argv[1]) as f:
        text = with_table(f.read())
    with open(sys.argv[1], "w") as f:
        f.write(text)
