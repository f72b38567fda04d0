"""Every flag of the trainer, one row each: its kind and its one help text, which ``--help`` prints and the
README's flag table shows (``flag_docs`` writes the table). Torch-free.

Kinds:
- ``accepted``: Megatron-LM's flag with Megatron's meaning and default (the text says where a detail
  differs; ``flag_docs.DIFFERENT_DEFAULTS`` lists the defaults that differ, printed at start-up);
- ``restated``: the flag describes what this project always builds, or asks for a Megatron switch that has
  no counterpart here; it is parsed, checked (a value that contradicts this build is an error naming the
  flag) and listed once at start-up;
- ``refused``: a Megatron flag for a feature this project does not have, with the reason. Megatron-LM's other
  flags are refused (or taken as no-ops) by feature: ``megatron_lm.FEATURES``;
- ``project``: this project's own flag (Megatron has no such flag).

A ``flag`` ending in ``*`` is a prefix (``--fp8-*`` is every flag starting with ``--fp8-``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field

from megatron_anchor.training.megatron_lm import megatron_feature

ACCEPTED, RESTATED, REFUSED, PROJECT = "accepted", "restated", "refused", "project"
KINDS = (ACCEPTED, RESTATED, REFUSED, PROJECT)
NO_EFFECT = "no effect"

Check = Callable[[object, argparse.Namespace], "str | None"]


@dataclass(frozen=True)
class Flag:
    """One flag: its kind and help text (the reason, for a refused flag); when restated, how it parses
    (argparse keywords), which values agree with this build (``check`` returns an error) and the value this
    build always has (``built``, None when it has no single value)."""

    flag: str
    kind: str
    help: str
    parse: dict = field(default_factory=dict)
    check: Check | None = None
    built: object = None

    @property
    def dest(self) -> str:
        """The argparse attribute name of a restated flag."""
        return self.parse.get("dest") or self.flag.lstrip("-").replace("-", "_")


def _equals(expected, why: str) -> Check:
    return lambda value, args: None if value == expected else f"{value}: {why}"


def _zero(value, args) -> str | None:
    return None if value == 0 else f"{value}: the anchor attention has no dropout; only 0"


def _kv_channels(value, args) -> str | None:
    head_dim = args.hidden_size // args.num_attention_heads
    if value == head_dim:
        return None
    return f"{value}: channels per head are --hidden-size / --num-attention-heads = {head_dim} here"


def _max_positions(value, args) -> str | None:
    if value >= args.seq_length:
        return None
    return f"{value} is below --seq-length {args.seq_length} (Megatron refuses this too)"


def _mask_reset(value, args) -> str | None:
    if args.attention_mode != "causal":
        return None
    return "contradicts --attention-mode causal (documents would see each other): use intra_doc or anchor"


def _ckpt_format(value, args) -> str | None:
    if value in ("torch_dist", "torch_dcp"):
        return None
    return f"{value}: checkpoints here are torch.distributed.checkpoint directories (torch_dist/torch_dcp)"


def _checkpoint_present(value, args) -> str | None:
    if not args.load or getattr(args, "load_checkpoint", None) is not None:
        return None
    return f"--load {args.load} holds no checkpoint yet"


_FLAG = {"action": "store_true"}
_INT, _FLOAT = {"type": int}, {"type": float}
_REQUIRED = "(required without a --load checkpoint that records it)"
_STOP = "stop the run: "

FLAGS: tuple[Flag, ...] = (
    # Model shape and architecture: left out, taken from the --load checkpoint, else the default.
    Flag("--num-layers", ACCEPTED, f"transformer layers {_REQUIRED}"),
    Flag("--hidden-size", ACCEPTED, f"model width {_REQUIRED}"),
    Flag("--ffn-hidden-size", ACCEPTED, "MLP width; default 4 x hidden, or with --swiglu "
         "int(8/3 x hidden / 64) x 64"),
    Flag("--num-attention-heads", ACCEPTED, f"query heads {_REQUIRED}"),
    Flag("--num-query-groups", ACCEPTED, "key/value heads (GQA; Megatron also needs --group-query-attention, "
         "implied here); default: as many as query heads"),
    Flag("--normalization", ACCEPTED, "LayerNorm (Megatron's default) or RMSNorm (Llama)"),
    Flag("--apply-layernorm-1p", ACCEPTED, "zero-centred norm weights, applied as 1 + weight"),
    Flag("--norm-epsilon", ACCEPTED, "epsilon of the norms"),
    Flag("--swiglu", ACCEPTED, "SwiGLU MLP (Llama); without it GeLU, as Megatron"),
    Flag("--disable-bias-linear", ACCEPTED, "no biases in the linear layers (Llama); without it every linear "
         "layer has a bias, as Megatron"),
    Flag("--add-qkv-bias", ACCEPTED, "a bias on the qkv projection only (Qwen2; with --disable-bias-linear)"),
    Flag("--untie-embeddings-and-output-weights", ACCEPTED, "separate input embedding and output layer "
         "(Llama); without it they are tied, as Megatron"),
    Flag("--hidden-dropout", ACCEPTED, "dropout on the embeddings and on the attention and MLP outputs"),
    Flag("--init-method-std", ACCEPTED, "std of the initial weights"),
    Flag("--make-vocab-size-divisible-by", ACCEPTED, "pad the vocabulary to a multiple of this x TP"),
    Flag("--vocab-size", ACCEPTED, "vocabulary without a tokenizer; with one, the model's vocabulary (it "
         "must hold every token id)"),
    Flag("--padded-vocab-size", ACCEPTED, "the model's vocabulary rows as they are (no padding; divisible by "
         "TP, at least the tokenizer's size)"),
    Flag("--rotary-base", ACCEPTED, "RoPE base (ABF: raise it); a float (Megatron: an int)"),
    Flag("--rotary-percent", ACCEPTED, "fraction of each head's channels rotated"),
    Flag("--rotary-interleaved", ACCEPTED, "rotate channel pairs (2k, 2k+1), not halves"),
    Flag("--rotary-seq-len-interpolation-factor", ACCEPTED, "position interpolation factor (a float; "
         "Megatron: an int); the same as --rope-scaling linear"),
    Flag("--use-rope-scaling", ACCEPTED, "Llama 3.1's RoPE scaling as Megatron applies it: factor "
         "--rope-scaling-factor, frequency factors 1 and 4, original context 8192"),
    Flag("--rope-scaling-factor", ACCEPTED, "the factor of --use-rope-scaling"),
    Flag("--recompute-granularity", ACCEPTED, "full: recompute whole layers in backward (torch's "
         "checkpoint); selective: the core attention only"),
    Flag("--recompute-activations", ACCEPTED, "= --recompute-granularity selective"),
    Flag("--recompute-method", ACCEPTED, "with --recompute-granularity full: uniform (every layer) or block "
         "(the first --recompute-num-layers layers)"),
    Flag("--recompute-num-layers", ACCEPTED, "uniform: 1 only; block: how many leading layers"),
    Flag("--transformer-impl", ACCEPTED, "layer implementation; default: Transformer Engine's when it "
         "imports, else megatron-core's local layers (Megatron: transformer_engine)"),
    Flag("--bf16", ACCEPTED, "bf16 compute, fp32 master weights (FSDP2: bf16 parameters, fp32 reduction)"),
    # Data and tokenizer.
    Flag("--data-path", ACCEPTED, "[weight] prefix ...: packed-anchor datasets from "
         "tools/preprocess_data.py, or Megatron-LM's own (one document per entry) read as they are; blends "
         "as Megatron"),
    Flag("--split", ACCEPTED, "train,valid,test proportions of each dataset"),
    Flag("--seq-length", ACCEPTED, "S: input tokens per sample (a sample is the anchor and S tokens)"),
    Flag("--mock-data", ACCEPTED, "synthetic packed samples"),
    Flag("--tokenizer-type", ACCEPTED, "SentencePieceTokenizer (also Megatron's Llama2Tokenizer and "
         "GPTSentencePieceTokenizer), HuggingFaceTokenizer, GPT2BPETokenizer (--vocab-file, --merge-file) or "
         "NullTokenizer (--vocab-size)"),
    Flag("--tokenizer-model", ACCEPTED, "SentencePiece .model file or Hugging Face tokenizer directory"),
    Flag("--vocab-file", ACCEPTED, "GPT2BPETokenizer: GPT-2's vocab.json (read by transformers' "
         "GPT2TokenizerFast)"),
    Flag("--merge-file", ACCEPTED, "GPT2BPETokenizer: GPT-2's merges.txt"),
    Flag("--data-cache-path", ACCEPTED, "directory for megatron-core's cached indices (Megatron-LM datasets: "
         "PREFIX/cache/ by default)"),
    Flag("--eod-mask-loss", ACCEPTED, "= --mask-cross-doc-labels: no loss on a label that starts a document"),
    Flag("--reset-position-ids", ACCEPTED, "= --position-ids reset: each document counts 1, 2, ..."),
    # Training schedule and optimizer.
    Flag("--micro-batch-size", ACCEPTED, "samples per forward on a data-parallel rank"),
    Flag("--global-batch-size", ACCEPTED, "samples per optimizer step; default: micro x data-parallel size"),
    Flag("--train-iters", ACCEPTED, "optimizer steps (or --train-samples)"),
    Flag("--train-samples", ACCEPTED, "samples to train on, converted to steps: samples // global batch"),
    Flag("--lr", ACCEPTED, "peak learning rate"),
    Flag("--min-lr", ACCEPTED, "learning rate at the end of the decay"),
    Flag("--decoupled-lr", ACCEPTED, "peak learning rate of the input embedding and the output layer "
         "(default: --lr)"),
    Flag("--decoupled-min-lr", ACCEPTED, "their learning rate at the end of the decay (default: --min-lr)"),
    Flag("--lr-decay-style", ACCEPTED, "decay after warmup: linear, cosine or constant"),
    Flag("--lr-decay-iters", ACCEPTED, "decay steps; default: --train-iters"),
    Flag("--lr-decay-samples", ACCEPTED, "with --train-samples; converted to steps"),
    Flag("--lr-warmup-iters", ACCEPTED, "linear warmup steps"),
    Flag("--lr-warmup-samples", ACCEPTED, "with --train-samples; converted to steps"),
    Flag("--lr-warmup-fraction", ACCEPTED, "warmup as a fraction of the decay steps (rounded)"),
    Flag("--weight-decay", ACCEPTED, "AdamW weight decay (not on 1-D parameters: norms, biases)"),
    Flag("--adam-beta1", ACCEPTED, "Adam beta1"),
    Flag("--adam-beta2", ACCEPTED, "Adam beta2 (Llama recipes use 0.95)"),
    Flag("--adam-eps", ACCEPTED, "Adam epsilon"),
    Flag("--clip-grad", ACCEPTED, "global gradient-norm clip; 0 disables"),
    Flag("--seed", ACCEPTED, "initialisation, dropout and data order"),
    Flag("--exit-interval", ACCEPTED, "save (with --save), then stop at the first step divisible by it"),
    Flag("--manual-gc", ACCEPTED, "disable Python's automatic garbage collection; collect explicitly"),
    Flag("--manual-gc-interval", ACCEPTED, "steps between collections (0: only after evaluation)"),
    Flag("--empty-unused-memory-level", ACCEPTED, "1: empty the CUDA cache after each step; 2: after "
         "evaluation too"),
    # Parallelism.
    Flag("--tensor-model-parallel-size", ACCEPTED, "TP"),
    Flag("--context-parallel-size", ACCEPTED, "CP: the anchor attention over the CP group (see "
         "--cp-comm-type)"),
    Flag("--cp-comm-type", ACCEPTED, "how CP ranks exchange the attention's inputs: p2p (the anchor ring), "
         "a2a (all-to-all of heads for tokens, then the whole sample per rank), a2a+p2p (all-to-all inside "
         "groups of A consecutive ranks, the ring across them); one type for every layer"),
    Flag("--hierarchical-context-parallel-sizes", ACCEPTED, "A P with A x P = CP, for a2a+p2p: the "
         "all-to-all degree (consecutive ranks, a node) and the ring's size"),
    Flag("--pipeline-model-parallel-size", ACCEPTED, "1 only: pipeline parallelism is not implemented"),
    Flag("--use-distributed-optimizer", ACCEPTED, "shard gradients and optimizer state over data-parallel "
         "ranks (torch's FSDP2, ZeRO-2-like)"),
    Flag("--sequence-parallel", ACCEPTED, "with TP: shard norms, residuals and embeddings along the sequence "
         "within each TP group"),
    Flag("--grad-reduce-in-bf16", ACCEPTED, "with --bf16: reduce gradients in bf16 (default fp32)"),
    # Checkpoints.
    Flag("--save", ACCEPTED, "checkpoint directory to write (this project's torch.distributed.checkpoint "
         "layout; Megatron's latest_checkpointed_iteration.txt beside latest); locked for the run's life"),
    Flag("--load", ACCEPTED, "checkpoint directory to resume or start from (this project's, or Megatron-LM "
         "torch_dist as starting weights); model flags left out are read from it"),
    Flag("--pretrained-checkpoint", ACCEPTED, "weights to start from (at step 0) while --load holds no "
         "checkpoint yet; once it does, the run resumes --load"),
    Flag("--save-interval", ACCEPTED, "steps between checkpoints"),
    Flag("--persistent-save-interval", ACCEPTED, "= --save-interval"),
    Flag("--no-save-optim", ACCEPTED, "checkpoints without the optimizer state (resume them with "
         "--no-load-optim or --finetune)"),
    Flag("--finetune", ACCEPTED, "load only the model weights of --load and start at step 0 with a new "
         "optimizer, RNG and schedule"),
    Flag("--no-load-optim", ACCEPTED, "resume without the optimizer state"),
    Flag("--no-load-rng", ACCEPTED, "resume with RNG states from --seed"),
    Flag("--override-opt-param-scheduler", ACCEPTED, "on resume, use the LR schedule flags even where they "
         "differ from the checkpoint's"),
    Flag("--override-opt_param-scheduler", ACCEPTED, "= --override-opt-param-scheduler"),
    Flag("--distributed-timeout-minutes", ACCEPTED, "a collective that waits longer (a stalled or dead rank) "
         "ends the job with an error; fractions allowed"),
    Flag("--exit-signal-handler", ACCEPTED, "on SIGTERM, finish the current step, save to --save, exit 0"),
    Flag("--exit-duration-in-mins", ACCEPTED, "after this many minutes of the job, finish the step, save and "
         "exit 0"),
    # Evaluation and logging.
    Flag("--eval-interval", ACCEPTED, "steps between validations"),
    Flag("--eval-iters", ACCEPTED, "global batches per validation"),
    Flag("--log-interval", ACCEPTED, "steps per log line (the first step is logged too, as Megatron does)"),
    Flag("--log-throughput", ACCEPTED, "no effect: throughput (TFLOP/s/GPU) is always logged"),
    Flag("--tensorboard-dir", ACCEPTED, "TensorBoard event files under Megatron's tag names ('lm loss', "
         "'learning-rate', ...)"),
    Flag("--wandb-project", ACCEPTED, "log to Weights & Biases (needs wandb; WANDB_MODE=offline works "
         "offline)"),
    Flag("--wandb-exp-name", ACCEPTED, "the W&B run name"),
    Flag("--wandb-save-dir", ACCEPTED, "W&B files; default: SAVE/wandb, as Megatron"),
    Flag("--wandb-entity", ACCEPTED, "the W&B team or user"),
    Flag("--profile", ACCEPTED, "profile steps [start, end) on --profile-ranks: nsys through the CUDA "
         "profiler API, or torch's with --use-pytorch-profiler"),
    Flag("--use-pytorch-profiler", ACCEPTED, "torch.profiler traces under --tensorboard-dir (else the log "
         "directory)"),
    Flag("--profile-step-start", ACCEPTED, "first profiled step (0-based)"),
    Flag("--profile-step-end", ACCEPTED, "profiling stops before this step"),
    Flag("--profile-ranks", ACCEPTED, "global ranks to profile"),
    # Restated: what this project always builds, or switches without counterpart here.
    Flag("--use-mcore-models", RESTATED, "the model is megatron-core's GPTModel", _FLAG),
    Flag("--group-query-attention", RESTATED, "GQA follows --num-query-groups", _FLAG),
    Flag("--kv-channels", RESTATED, "must equal hidden / heads", _INT, _kv_channels),
    Flag("--max-position-embeddings", RESTATED, "must be >= --seq-length (RoPE: no position table)", _INT,
         _max_positions),
    Flag(
        "--position-embedding-type", RESTATED, "rope only: fp32 RoPE inside the anchor attention",
        {"choices": ("learned_absolute", "rope", "mrope", "relative", "none")},
        _equals("rope", "this model applies RoPE (fp32) inside the attention; only rope"), built="rope",
    ),
    Flag("--use-rotary-position-embeddings", RESTATED, "= --position-embedding-type rope", _FLAG),
    Flag("--no-position-embedding", RESTATED, "there is no learned absolute position embedding", _FLAG),
    Flag("--no-rope-fusion", RESTATED, "RoPE is this project's fp32 rotation (TE's fused kernel where it "
         "imports)", _FLAG),
    Flag("--attention-dropout", RESTATED, "0 only: the anchor attention has no dropout", _FLOAT, _zero, 0.0),
    Flag("--attention-softmax-in-fp32", RESTATED, "the anchor attention's softmax is fp32 always", _FLAG),
    Flag("--use-flash-attn", RESTATED, "the anchor attention picks its kernel itself", _FLAG),
    Flag(
        "--attention-backend", RESTATED, "the anchor attention picks its kernel itself",
        {"choices": ("auto", "flash", "fused", "unfused", "local")},
    ),
    Flag("--reset-attention-mask", RESTATED, "documents never see each other (anchor, intra_doc)", _FLAG,
         _mask_reset),
    Flag("--calculate-per-token-loss", RESTATED, "the loss is the global batch's token mean", _FLAG),
    Flag("--use-checkpoint-args", RESTATED, "model flags left out are always read from the --load checkpoint",
         _FLAG),
    Flag("--exit-on-missing-checkpoint", RESTATED, "--load must hold a checkpoint", _FLAG,
         _checkpoint_present),
    Flag("--ckpt-format", RESTATED, "torch_dist or torch_dcp: this project's DCP layout", {}, _ckpt_format,
         "torch_dist"),
    Flag("--optimizer", RESTATED, "adam only (AdamW, as Megatron's adam)", {"choices": ("adam", "sgd")},
         _equals("adam", "the optimizer is AdamW; only adam"), built="adam"),
    Flag("--distributed-backend", RESTATED, "the device decides: NCCL on GPUs, gloo on CPUs",
         {"choices": ("nccl", "gloo", "ucc")}),
    Flag("--no-create-attention-mask-in-dataloader", RESTATED, "no dense masks: document ids", _FLAG),
    Flag("--overlap-grad-reduce", RESTATED, "DDP/FSDP2 reduce gradients during backward", _FLAG),
    Flag("--overlap-param-gather", RESTATED, "FSDP2 prefetches its all-gathers", _FLAG),
    Flag("--no-gradient-accumulation-fusion", RESTATED, "megatron-core's fusions are off", _FLAG),
    Flag("--no-masked-softmax-fusion", RESTATED, "megatron-core's fusions are off", _FLAG),
    Flag("--cross-entropy-loss-fusion", RESTATED, "no effect: megatron-core's vocab-parallel loss", _FLAG),
    Flag("--num-workers", RESTATED, "no effect: samples are read in the training process", _INT),
    Flag("--no-mmap-bin-files", RESTATED, "no effect: .bin files are memory-mapped", _FLAG),
    Flag("--tiktoken-pattern", RESTATED, "no effect: only Megatron's TikTokenizer reads it", {}),
    Flag("--log-timers-to-tensorboard", RESTATED, "the step time is logged as 'iteration-time' always",
         _FLAG),
    # Refused: a Megatron-LM flag newer than the list megatron_lm reads.
    Flag("--step-batch-size-schedule", REFUSED, "the global batch is fixed (data position = step x batch)"),
    # This project's own flags.
    Flag("--attention-mode", PROJECT, "visibility rule: causal, intra_doc or anchor (the default, whatever a "
         "--load checkpoint was trained with)"),
    Flag("--position-ids", PROJECT, "RoPE positions: global (the default) or reset (per document)"),
    Flag("--mask-cross-doc-labels", PROJECT, "no loss on a label that starts the next document (the token "
         "after a document's EOD)"),
    Flag("--no-data-shuffle", PROJECT, "samples in file order: no seeded shuffle of documents or samples"),
    Flag("--cp-layout", PROJECT, "which tokens each CP rank holds: balanced (the default: the same attention "
         "work on every rank, no padding) or megatron (megatron-core's 2 x CP chunks)"),
    Flag("--cross-entropy-chunk-size", PROJECT, "run the output layer and the loss over this many sequence "
         "positions at a time, recomputed in backward, so the [s, b, vocab/TP] logits and their fp32 softmax "
         "are never kept (0: off)"),
    Flag("--rope-scaling", PROJECT, "context-extension strategy as JSON (Hugging Face rope_scaling form "
         "accepted; YaRN, Llama 3.1, NTK, LongRoPE, DPRoPE ...), a JSON file (tools/rope_distribution.py "
         "--save) or 'none'"),
    Flag("--log-jsonl", PROJECT, "append one JSON object per log line"),
    Flag("--peak-tflops", PROJECT, "per-GPU peak for MFU (default: known H100/H200/A100 bf16 peaks)"),
    Flag("--dry-run", PROJECT, "check flags, tokenizer, data and paths; print the configuration and a "
         "verdict; exit"),
)  # fmt: skip

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


def add_flag(group, *names: str, **kwargs) -> argparse.Action:
    """``group.add_argument(*names, **kwargs)`` with the help text of the first name's row."""
    return group.add_argument(*names, help=BY_FLAG[names[0]].help, **kwargs)


def fill_help(parser: argparse.ArgumentParser) -> None:
    """Give every option of ``parser`` that has a row its row's help text (the one text of each flag)."""
    for action in parser._actions:
        row = next((BY_FLAG[s] for s in action.option_strings if s in BY_FLAG), None)
        if row is not None:
            action.help = row.help


def add_restated_args(parser: argparse.ArgumentParser) -> None:
    """The restated flags, each parsed only when given (``argparse.SUPPRESS`` default)."""
    group = parser.add_argument_group(
        "Megatron flags that restate this build (checked, listed once at start-up)"
    )
    for row in RESTATED_FLAGS:
        group.add_argument(row.flag, default=argparse.SUPPRESS, help=row.help, **row.parse)


def check_restated(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """(the restated flags given, as ``--flag value`` texts; one error per flag that contradicts this
    build, naming the flag)."""
    given, errors = [], []
    for row in RESTATED_FLAGS:
        if not hasattr(args, row.dest):
            continue
        value = getattr(args, row.dest)
        problem = row.check(value, args) if row.check else None
        if problem:
            errors.append(f"{row.flag} {problem}")
        given.append(row.flag if value is True else f"{row.flag} {value}")
    return given, errors


def not_accepted(flag: str, given: frozenset[str] | set[str] | None = None) -> tuple[str, str] | None:
    """(``refused`` or ``no effect``, why) for a flag this trainer does not define: a refused row, else the
    Megatron-LM feature it belongs to; None for a name Megatron-LM does not know either (a typo).
    ``given``: the command line's flags, if known (a feature's flag without its switch changes nothing)."""
    row = lookup(flag)
    if row is not None and row.kind == REFUSED:
        return REFUSED, row.help
    feature = megatron_feature(flag)
    if feature is None:
        return None
    switch = feature.switched_on_by
    if feature.no_effect or (given is not None and switch and flag != switch and switch not in given):
        return NO_EFFECT, feature.reason if feature.no_effect else f"without {switch}: {feature.reason}"
    return REFUSED, feature.reason
