"""Megatron-LM's own training flags, as data, and what this trainer does with the ones it has no row for.

``megatron_lm_flags.json`` lists every flag of Megatron-LM's training parser (tag ``core_v0.16.0``,
``megatron/training/arguments.py``, written by ``scripts/extract_megatron_flags.py``): names, argument
group, dest, nargs and default. A Megatron flag this trainer does not define belongs to one *feature*
below, which says in one reason why it is refused (``MoE is not implemented``), or that it has no effect
here (a fusion or telemetry switch: parsed, listed once at start-up). Only a name Megatron-LM does not
know is a typo. Torch-free.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

_DATA = Path(__file__).with_name("megatron_lm_flags.json")


@dataclass(frozen=True)
class MegatronFlag:
    """One option string of Megatron-LM's parser."""

    flag: str
    group: str
    dest: str
    nargs: int | str | None
    default: object

    @property
    def takes_value(self) -> bool:
        """Whether the flag is followed by a value (else it is a switch)."""
        return self.nargs != 0


@functools.cache
def megatron_lm_flags() -> dict[str, MegatronFlag]:
    """Every option string of Megatron-LM's training parser -> its entry (aliases share one)."""
    data = json.loads(_DATA.read_text())
    flags = {}
    for action in data["actions"]:
        for flag in action["flags"]:
            entry = (action["group"], action["dest"], action["nargs"], action["default"])
            flags[flag] = MegatronFlag(flag, *entry)
    return flags


@functools.cache
def megatron_lm_source() -> str:
    """``Megatron-LM core_v0.16.0 megatron/training/arguments.py``: where the list comes from."""
    source = json.loads(_DATA.read_text())["source"]
    return f"Megatron-LM {source['tag']} {source['file']}"


@dataclass(frozen=True)
class Feature:
    """A Megatron-LM feature this trainer lacks: its flags (by name, prefix or Megatron argument group) and
    the one reason they are refused, or, when ``no_effect``, why they change nothing here. With
    ``switched_on_by``, the feature's other flags change nothing unless that flag is given too (as MoE's
    without ``--num-experts`` in Megatron-LM)."""

    name: str
    reason: str
    flags: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()
    no_effect: bool = False
    switched_on_by: str | None = None

    def covers(self, flag: MegatronFlag) -> bool:
        """Whether ``flag`` belongs to this feature."""
        return (
            flag.flag in self.flags
            or flag.flag.startswith(self.prefixes)
            or flag.group in self.groups
        )


_BF16 = "use --bf16"
FEATURES: tuple[Feature, ...] = (
    Feature(
        "MoE", "mixture-of-experts (MoE) layers are not implemented: dense models only",
        ("--num-experts", "--expert-model-parallel-size", "--expert-tensor-parallel-size",
         "--overlap-moe-expert-parallel-comm", "--ep-overlap-early-attn-memory-release"),
        ("--moe-",), ("moe",), switched_on_by="--num-experts",
    ),
    Feature(
        "MLA", "multi-latent attention (MLA) is not implemented", ("--multi-latent-attention",), (), ("mla",)
    ),
    Feature(
        "pipeline parallelism", "pipeline parallelism is not implemented (one stage)",
        ("--num-layers-per-virtual-pipeline-stage", "--num-virtual-stages-per-pipeline-rank",
         "--decoder-first-pipeline-num-layers", "--decoder-last-pipeline-num-layers",
         "--use-ring-exchange-p2p", "--overlap-p2p-communication-warmup-flush",
         "--microbatch-group-size-per-virtual-pipeline-stage", "--no-overlap-p2p-communication",
         "--no-scatter-gather-tensors-in-pipeline", "--defer-embedding-wgrad-compute",
         "--wgrad-deferral-limit"),
        ("--pipeline-model-parallel-", "--account-for-"),
    ),
    Feature(
        "FP8/FP4", f"FP8/FP4 training is not implemented: {_BF16}",
        ("--first-last-layers-bf16", "--num-layers-at-start-in-bf16", "--num-layers-at-end-in-bf16",
         "--te-precision-config-file", "--keep-fp8-transpose-cache", "--reuse-grad-buf-for-mxfp8-param-ag",
         "--use-kitchen-attention", "--kitchen-attention-backend", "--no-fp8-wgrad", "--disable-fp8-wgrad"),
        ("--fp8-", "--fp4-", "--kitchen-"), ("kitchen",),
    ),
    Feature(
        "fp16", f"fp16 needs loss scaling, which is not implemented: {_BF16}",
        ("--fp16", "--loss-scale", "--initial-loss-scale", "--min-loss-scale", "--loss-scale-window",
         "--hysteresis", "--fp16-lm-cross-entropy"),
    ),
    Feature(
        "TP communication overlap",
        "Transformer Engine's TP communication overlap (userbuffers) is not wired here",
        ("--delay-wgrad-compute",), ("--tp-comm-", "--no-tp-comm-", "--disable-tp-comm-"),
    ),
    Feature(
        "Megatron-FSDP",
        "Megatron-FSDP is not implemented: --use-distributed-optimizer shards with torch's FSDP2",
        ("--use-megatron-fsdp", "--data-parallel-sharding-strategy", "--outer-dp-sharding-strategy",
         "--suggested-communication-unit-size", "--enable-full-sharding-in-hsdp",
         "--num-distributed-optimizer-instances", "--init-model-with-meta-device",
         "--no-gradient-reduce-div-fusion", "--use-torch-fsdp2", "--torch-fsdp2-no-reshard-after-forward"),
        ("--fsdp-", "--megatron-fsdp-"),
    ),
    Feature(
        "context-parallel variants",
        "context parallelism here is the anchor attention (--cp-comm-type p2p, a2a, a2a+p2p) with "
        "--cp-layout",
        ("--max-seqlen-per-dp-cp-rank", "--hybrid-context-parallel"),
    ),
    Feature("multi-token prediction", "multi-token prediction (MTP) is not implemented", (), ("--mtp-",)),
    Feature(
        "attention variants",
        "the attention is the anchor attention (softmax over the anchor and the query's document, RoPE); "
        "other attention variants are not implemented",
        ("--window-size", "--window-attn-skip-freq", "--experimental-attention-variant", "--softmax-type",
         "--attention-output-gate", "--no-rope-freq", "--rope-type", "--linear-attention-freq",
         "--apply-residual-connection-post-layernorm", "--fp32-residual-connection"),
        ("--dsa-", "--linear-", "--qk-", "--relative-attention-", "--heterogeneous-", "--mrope-"),
        ("experimental_attention_variant", "heterogeneous architecture"),
    ),
    Feature(
        "activations", "the MLP activation is GeLU (the default) or --swiglu",
        ("--squared-relu", "--quick-geglu", "--openai-gelu", "--glu-linear-offset",
         "--activation-func-clamp-value", "--use-fused-weighted-squared-relu"),
    ),
    Feature(
        "encoder and vision models",
        "encoder (BERT, T5), retrieval and vision models are not implemented: GPT only",
        ("--encoder-num-layers", "--decoder-num-layers", "--encoder-seq-length", "--decoder-seq-length",
         "--bert-no-binary-head", "--mask-prob", "--short-seq-prob", "--vocab-extra-ids",
         "--output-bert-embeddings",
         "--bert-embedder-type"),
        (), ("biencoder", "vision"),
    ),
    Feature(
        "RL", "reinforcement learning (GRPO) is not implemented", ("--refit-method",),
        ("--rl-", "--grpo-", "--langrl-"), ("rl",),
    ),
    Feature(
        "inference", "inference and text generation are not part of this trainer",
        ("--onnx-safe", "--lazy-mpu-init", "--flash-decode", "--mlp-chunks-for-prefill"), ("--inference-",),
        ("inference",),
    ),
    Feature(
        "CUDA graphs", "CUDA graphs are not implemented",
        ("--enable-cuda-graph", "--external-cuda-graph"), ("--cuda-graph-",),
    ),
    Feature(
        "Mamba hybrid models", "Mamba and hybrid Mamba-attention models are not implemented",
        ("--is-hybrid-model", "--disable-mamba-mem-eff-path"), ("--mamba-", "--hybrid-"),
    ),
    Feature(
        "SFT", "supervised fine-tuning datasets are not implemented: pretraining data only", (), ("--sft",),
        ("sft",),
    ),
    Feature(
        "fault-tolerance services",
        "NVIDIA's resiliency services (in-process restart, fault tolerance, rerun engine, autoresume) are "
        "not wired here: --exit-signal-handler and --save-interval with --load = --save restart a run",
        ("--check-weight-hash-across-dp-replicas-interval", "--check-for-large-grads",
         "--result-rejected-tracker-filename", "--distributed-timeout-seconds-after-init",
         "--check-for-spiky-loss", "--exit-signal", "--iterations-to-skip"),
        ("--inprocess-", "--error-injection-", "--rerun-", "--adlr-autoresume"),
        ("In-process restart", "ft_package", "rerun engine", "autoresume"),
    ),
    Feature(
        "Megatron checkpoint options",
        "checkpoints are this project's torch.distributed.checkpoint directories (--save, --load, "
        "--save-interval, --finetune, --no-load-optim/rng, --no-save-optim); Megatron's other checkpoint "
        "options do not apply",
        ("--load-main-params-from-ckpt", "--ckpt-step",
         "--use-mp-args-from-checkpoint-args",
         "--no-use-tokenizer-model-from-checkpoint-args",
         "--disable-use-tokenizer-model-from-checkpoint-args",
         "--auto-detect-ckpt-format", "--async-save", "--use-persistent-ckpt-worker", "--use-dist-ckpt",
         "--no-strict-fsdp-dtensor-load", "--disable-strict-fsdp-dtensor-load", "--save-wgrads-interval",
         "--save-dgrads-interval", "--save-retain-interval", "--no-save-rng",
         "--distrib-optim-fully-reshardable-mem-efficient"),
        ("--non-persistent-", "--ckpt-", "--no-ckpt-", "--disable-ckpt-", "--dist-ckpt-", "--replication"),
    ),
    Feature(
        "data options",
        "data comes from --data-path (blends) with --split, or --mock-data; Megatron's other data sources "
        "and loaders are not implemented",
        ("--train-data-path", "--valid-data-path", "--test-data-path", "--data-args-path",
         "--per-split-data-args-path", "--per-dataset-sequences-path", "--phase-transition-iterations",
         "--object-storage-cache-path", "--mid-level-dataset-surplus", "--allow-ambiguous-pad-tokens",
         "--sample-rate", "--dataloader-type", "--full-validation", "--multiple-validation-sets",
         "--skip-train", "--test-mode", "--yaml-cfg", "--spec", "--enable-experimental"),
        ("--fim-", "--dataloader-"),
    ),
    Feature(
        "tokenizer options",
        "the tokenizer (SentencePiece, Hugging Face, GPT-2 BPE files) is read as it is; Megatron's "
        "tokenizer options are not implemented",
        ("--tokenizer-metadata", "--tokenizer-special-tokens", "--legacy-tokenizer", "--trust-remote-code",
         "--tiktoken-num-special-tokens", "--tiktoken-special-tokens", "--tokenizer-sentencepiece-legacy"),
        ("--tokenizer-hf-",),
    ),
    Feature(
        "optimizer variants",
        "the optimizer is AdamW with fp32 master weights and state, on Megatron's LR schedule flags; "
        "other optimizers, schedules and optimizer precisions are not implemented",
        ("--sgd-momentum", "--use-precision-aware-optimizer", "--main-grads-dtype", "--main-params-dtype",
         "--exp-avg-dtype", "--exp-avg-sq-dtype", "--start-weight-decay", "--end-weight-decay",
         "--weight-decay-incr-style", "--apply-wd-to-qk-layernorm", "--no-weight-decay-cond-type",
         "--lr-warmup-init", "--dump-param-to-param-group-map", "--use-checkpoint-opt_param-scheduler",
         "--use-checkpoint-opt-param-scheduler"),
        ("--muon-", "--lr-wsd-"),
    ),
    Feature(
        "batch-size ramp-up", "the global batch is fixed: the data position is step x --global-batch-size",
        ("--rampup-batch-size", "--decrease-batch-size-if-needed"),
    ),
    Feature(
        "offloading", "CPU offloading of activations, weights or the optimizer is not implemented",
        ("--cpu-offloading-num-layers", "--optimizer-cpu-offload", "--optimizer-offload-fraction",
         "--use-torch-optimizer-for-cpu-offload", "--overlap-cpu-optimizer-d2h-h2d", "--no-pin-cpu-grads",
         "--no-pin-cpu-params", "--fine-grained-activation-offloading", "--offload-modules",
         "--min-offloaded-tensor-size"),
    ),
    Feature(
        "model options",
        "not implemented here: the model is megatron-core's GPTModel built by this project's layer spec, "
        "initialised from --seed with --init-method-std",
        ("--use-legacy-models", "--embedding-init-method-std", "--init-method-xavier-uniform",
         "--data-parallel-random-init", "--te-rng-tracker", "--inference-rng-tracker",
         "--distribute-saved-activations", "--recompute-modules", "--deterministic-mode",
         "--disable-bf16-reduced-precision-matmul", "--use-tp-pp-dp-mapping", "--fake-process-group",
         "--record-memory-history", "--memory-snapshot-path", "--no-manual-gc-eval",
         "--disable-manual-gc-eval",
         "--batch-invariant-mode"),
    ),
    Feature(
        "renamed flags", "an old Megatron-LM name: use its replacement (--micro-batch-size, "
        "--recompute-granularity full, --lr-warmup-iters, --tensor-model-parallel-size)",
        ("--batch-size", "--checkpoint-activations", "--warmup", "--model-parallel-size"),
    ),
    Feature(
        "fusions and communication tuning",
        "no effect: megatron-core's fusions are off and torch's DDP/FSDP2 schedule their own communication",
        ("--no-async-tensor-model-parallel-allreduce", "--disable-async-tensor-model-parallel-allreduce",
         "--cross-entropy-fusion-impl", "--no-bias-gelu-fusion", "--no-bias-swiglu-fusion",
         "--no-bias-dropout-fusion", "--no-persist-layer-norm", "--disable-jit-fuser",
         "--high-priority-stream-groups", "--no-align-grad-reduce",
         "--overlap-param-gather-with-optimizer-step",
         "--no-align-param-gather", "--use-nccl-ub", "--disable-symmetric-registration", "--use-sharp",
         "--sharp-enabled-group", "--create-all-gather-group", "--nccl-communicator-config-path",
         "--accumulate-allreduce-grads-in-fp32", "--apply-query-key-layer-scaling", "--train-sync-interval",
         "--disable-gloo-process-groups", "--exit-signal-handler-for-dataloader",
         "--num-dataset-builder-threads",
         "--use-cpu-initialization", "--no-initialization", "--local-rank", "--disable-msc",
         "--no-check-for-nan-in-loss-and-grad", "--no-clone-scatter-output-in-embedding",
         "--disable-clone-scatter-output-in-embedding", "--use-te-activation-func", "--symmetric-ar-type"),
        ("--ddp-",), no_effect=True,
    ),
    Feature(
        "telemetry and extra logs",
        "no effect: this trainer logs loss, LR, grad norm, throughput, memory and ETA (stdout, JSONL, "
        "TensorBoard, W&B); these extra logs and telemetry services are not produced",
        ("--log-params-norm", "--log-progress", "--timing-log-level", "--timing-log-option",
         "--tensorboard-log-interval", "--tensorboard-queue-size", "--no-log-loss-scale-to-tensorboard",
         "--disable-log-loss-scale-to-tensorboard", "--log-validation-ppl-to-tensorboard",
         "--log-memory-to-tensorboard", "--log-memory-interval", "--log-device-memory-used",
         "--log-num-zeros-in-grad", "--log-max-attention-logit", "--no-barrier-with-level-1-timing",
         "--log-world-size-to-tensorboard", "--logging-level", "--log-energy", "--log-straggler",
         "--straggler-ctrlr-port", "--straggler-minmax-count", "--disable-straggler-on-startup",
         "--run-workload-inspector-server", "--config-logger-dir"),
        (), ("one logger",), no_effect=True,
    ),
)  # fmt: skip


def megatron_feature(flag: str) -> Feature | None:
    """The feature a Megatron-LM flag belongs to (None: not a Megatron-LM flag, or none matches)."""
    entry = megatron_lm_flags().get(flag)
    if entry is None:
        return None
    return next((feature for feature in FEATURES if feature.covers(entry)), None)
