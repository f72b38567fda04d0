"""Ten command lines from Megatron-LM's own examples and docs, as test data, with small local fixtures for
their paths, and the README's table of how this trainer takes each of their flags.

Each ``line`` is what bash passes to ``pretrain_gpt.py`` (arrays expanded, so ``--split '99,1,0'`` keeps
its quotes), with the script's paths replaced by ``{placeholders}`` filled from ``recipe_fixtures``. Lines
from the docs are fragments to add to a training command: the flags such a command needs (data, batch,
steps) are in ``added``. ``expected`` lists the problems besides refused and unknown flags (which the
flag table decides) that the dry run must report, all in one round.

``python tests/training/megatron_recipes.py README.md`` rewrites the README's recipe table.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

MLM = "Megatron-LM"
_LLAMA3_8B_MODEL = """
    --use-mcore-models --num-layers 32 --hidden-size 4096 --ffn-hidden-size 14336 --num-attention-heads 32
    --group-query-attention --num-query-groups 8 --kv-channels 128 --seq-length 8192
    --max-position-embeddings 8192 --position-embedding-type rope --rotary-base 1000000 --rotary-percent 1.0
    --attention-dropout 0.0 --hidden-dropout 0.0 --swiglu {norm} --init-method-std 0.0134
    --attention-backend fused
    --apply-layernorm-1p --untie-embeddings-and-output-weights --disable-bias-linear
"""
_LLAMA3_8B_TRAIN = """
    --micro-batch-size 1 --global-batch-size 128 --train-samples 1953125000 --lr-decay-samples 1949218748
    --lr-warmup-samples 3906252 --lr 0.00015 --min-lr 0.00001 --decoupled-lr 5.0e-4 --decoupled-min-lr 4.5e-5
    --lr-decay-style cosine --clip-grad 1.0 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --bf16
"""
_FP8 = "--fp8-format hybrid --fp8-amax-history-len 1024 --fp8-amax-compute-algo max --fp8-param-gather"
_REAL_DATA = """
    --data-path {data8192} --tokenizer-type HuggingFaceTokenizer --tokenizer-model {hf128256}
    --data-cache-path {out}/cache --split '99,1,0' --no-create-attention-mask-in-dataloader
    --no-mmap-bin-files --num-workers 1 --vocab-size 128256
"""
_PROFILE = "--log-throughput --profile --profile-step-start 4 --profile-step-end 6"
# examples/post_training/modelopt/conf/meta-llama/Llama-3.1-8B-Instruct.sh MODEL_ARGS
_LLAMA31_MODELOPT = """
    --save-interval 100000 --micro-batch-size 1 --bf16 --no-masked-softmax-fusion --disable-bias-linear
    --untie-embeddings-and-output-weights --use-rotary-position-embeddings --rotary-percent 1.0
    --no-rope-fusion
    --no-position-embedding --normalization RMSNorm --swiglu --num-layers 32 --hidden-size 4096
    --ffn-hidden-size 14336 --num-attention-heads 32 --group-query-attention --num-query-groups 8
    --seq-length 4096 --max-position-embeddings 8192 --tokenizer-type HuggingFaceTokenizer
    --make-vocab-size-divisible-by 1 --use-mcore-models --rotary-base 500000 --use-rope-scaling
"""
# examples/post_training/modelopt/finetune.sh: the arguments after the model's, TP/ETP/EP/PP/CP filled in.
_MODELOPT_FINETUNE = """
    --tensor-model-parallel-size {tp} --expert-tensor-parallel-size {tp} --expert-model-parallel-size 1
    --pipeline-model-parallel-size 1 --context-parallel-size {cp} {cp_comm} --tokenizer-model {hf128256}
    --load {ckpt} --save {ckpt} --train-samples 128000 --lr-decay-samples 128000 --lr-warmup-samples 0
    --split 100,0,0 --finetune-hf-dataset Magpie-Align/Magpie-Llama-3.1-Pro-MT-300K-Filtered --lr 5.0e-5
    --min-lr 1.0e-7 --lr-decay-style cosine --clip-grad 1.0 --weight-decay 0.0 --adam-beta1 0.9
    --adam-beta2 0.95
    --init-method-std 0.010 --use-distributed-optimizer --no-gradient-accumulation-fusion --reset-position-ids
    --reset-attention-mask --eod-mask-loss --micro-batch-size 1 --attention-dropout 0.0 --hidden-dropout 0.0
    --no-check-for-nan-in-loss-and-grad {backend} --eval-iters 1 --eval-interval 1000 --save-interval 1000
    --log-interval 100 --distributed-timeout-minutes 30 --auto-detect-ckpt-format --export-te-mcore-model
    --finetune
"""


def _modelopt_finetune(tp: int, cp: int, ckpt: str) -> str:
    """finetune.sh's arguments at TP ``tp``, CP ``cp`` (CP > 1: --cp-comm-type p2p, --attention-backend
    fused, from core_v0.17.0), loading fixture ``ckpt``."""
    cp_flags = ("--cp-comm-type p2p", "--attention-backend fused") if cp > 1 else ("", "")
    return _MODELOPT_FINETUNE.format(
        tp=tp, cp=cp, cp_comm=cp_flags[0], backend=cp_flags[1], ckpt="{" + ckpt + "}", hf128256="{hf128256}"
    )


_MODELOPT_EXPECTED = ("give --data-path PREFIX (packed dataset) or --mock-data",)
# What a training command needs beside a docs fragment of model-loading flags.
_TRAINING = "--micro-batch-size 1 --global-batch-size 8 --train-iters 100 --lr 1e-5 --split 99,1,0"


@dataclass(frozen=True)
class Recipe:
    """One Megatron-LM command line and what the dry run must find."""

    name: str
    source: str
    line: str
    world_size: int = 8
    added: str = ""
    expected: tuple[str, ...] = ()

    def argv(self, fixtures: dict[str, str]) -> list[str]:
        """The command line with its fixtures filled in (the flags of ``added`` last)."""
        return f"{self.line} {self.added}".format(**fixtures).split()


RECIPES: tuple[Recipe, ...] = (
    Recipe(
        "Llama-3 8B FP8",
        f"{MLM} core_v0.16.0 examples/llama/train_llama3_8b_h100_fp8.sh (with a tokenizer and data)",
        _LLAMA3_8B_MODEL.format(norm="")
        + _LLAMA3_8B_TRAIN
        + """--grad-reduce-in-bf16 --cross-entropy-loss-fusion --calculate-per-token-loss --manual-gc
        --empty-unused-memory-level 1 --exit-duration-in-mins 235 --use-distributed-optimizer
        --overlap-grad-reduce --overlap-param-gather """
        + _FP8
        + " --tensor-model-parallel-size 1 --context-parallel-size 1 --sequence-parallel"
        + _REAL_DATA
        + f"--log-interval 1 --eval-iters 32 --eval-interval 100 --save-interval 1000 {_PROFILE} "
        "--ckpt-format torch_dist --distributed-timeout-minutes 60 --save {out}/ckpt --load {out}/ckpt "
        "--tensorboard-dir {out}/tensorboard",
    ),
    Recipe(
        "GPT-3 175B",
        f"{MLM} core_v0.16.0 examples/gpt3/train_gpt3_175b_distributed.sh",
        """--num-layers 96 --hidden-size 12288 --num-attention-heads 96 --seq-length 2048
        --max-position-embeddings 2048 --attention-backend auto --micro-batch-size 1 --global-batch-size 1536
        --rampup-batch-size 16 16 5859375 --train-iters 500000 --weight-decay 0.1 --adam-beta1 0.9
        --adam-beta2 0.95 --init-method-std 0.006 --clip-grad 1.0 --fp16 --lr 6.0e-5 --lr-decay-style cosine
        --min-lr 6.0e-6 --lr-warmup-fraction .001 --lr-decay-iters 430000 --tensor-model-parallel-size 8
        --pipeline-model-parallel-size 16 --data-path {data2048} --vocab-file {gpt2_vocab}
        --merge-file {gpt2_merges} --split 949,50,1 --log-interval 100 --save-interval 10000
        --eval-interval 1000 --save {out}/ckpt --load {out}/ckpt --eval-iters 10
        --tensorboard-dir {out}/tb""",
        expected=(
            "--pipeline-model-parallel-size 16: pipeline parallelism is not supported (use 1)",
            "--vocab-file and --merge-file go with --tokenizer-type GPT2BPETokenizer",
        ),
    ),
    Recipe(
        "Mixtral 8x7B",
        f"{MLM} core_v0.16.0 examples/mixtral/train_mixtral_8x7b_distributed.sh",
        """--use-mcore-models --disable-bias-linear --seq-length 4096 --max-position-embeddings 32768
        --num-layers 32 --hidden-size 4096 --ffn-hidden-size 14336 --num-attention-heads 32
        --init-method-std 0.01 --attention-dropout 0.0 --hidden-dropout 0.0 --normalization RMSNorm
        --position-embedding-type rope --swiglu --untie-embeddings-and-output-weights --group-query-attention
        --num-query-groups 8 --no-masked-softmax-fusion --no-position-embedding --rotary-base 1000000
        --num-experts 8 --moe-router-topk 2 --moe-router-load-balancing-type aux_loss --moe-aux-loss-coeff
        1e-2
        --moe-grouped-gemm --moe-token-dispatcher-type alltoall --overlap-param-gather --overlap-grad-reduce
        --tokenizer-type Llama2Tokenizer --tokenizer-model {sp32000} --data-path {data4096} --split 99990,8,2
        --micro-batch-size 1 --global-batch-size 256 --lr 1e-4 --train-iters 500000 --lr-decay-iters 320000
        --lr-decay-style cosine --min-lr 1.0e-5 --weight-decay 0.1 --lr-warmup-iters 500 --clip-grad 1.0
        --bf16
        --tensor-model-parallel-size 1 --pipeline-model-parallel-size 4 --expert-model-parallel-size 8
        --use-distributed-optimizer --sequence-parallel --log-interval 1 --save-interval 10000
        --eval-interval 1000 --eval-iters 10 --save {out}/ckpt --load {out}/ckpt
        --tensorboard-dir {out}/ckpt/tensorboard --no-load-optim --no-load-rng""",
        expected=("--pipeline-model-parallel-size 4: pipeline parallelism is not supported (use 1)",),
    ),
    Recipe(
        "Llama-2 70B",
        f"{MLM} core_v0.16.0 docs/llama_mistral.md, Llama-2 'Launch Megatron' (TP 8 for 70B)",
        """--tensor-model-parallel-size 8 --pipeline-model-parallel-size 1 --seq-length 4096
        --max-position-embeddings 4096 --tokenizer-type Llama2Tokenizer --tokenizer-model {sp32000}
        --load {llama2_70b} --exit-on-missing-checkpoint --use-checkpoint-args --no-load-optim --no-load-rng
        --untie-embeddings-and-output-weights --use-rotary-position-embeddings --normalization RMSNorm
        --no-position-embedding --no-masked-softmax-fusion --attention-softmax-in-fp32""",
        added=f"{_TRAINING} --data-path {{data4096}} --save {{out}}/run",
    ),
    Recipe(
        "Llama-3 8B Megatron-FSDP",
        f"{MLM} examples/megatron_fsdp/train_llama3_8b_fsdp_h100_fp8.sh at fb154fb353 (2026-04-01, "
        "its first version; with a tokenizer and data)",
        _LLAMA3_8B_MODEL.format(norm="--normalization RMSNorm")
        + _LLAMA3_8B_TRAIN
        + """--cross-entropy-loss-fusion --manual-gc --empty-unused-memory-level 1 --exit-duration-in-mins 235
        --use-megatron-fsdp --data-parallel-sharding-strategy optim_grads_params
        --no-gradient-accumulation-fusion
        --calculate-per-token-loss --init-model-with-meta-device --ckpt-format fsdp_dtensor
        --grad-reduce-in-bf16
        --use-nccl-ub --fsdp-double-buffer --fsdp-manual-registration --use-distributed-optimizer
        --overlap-grad-reduce --overlap-param-gather """
        + _FP8
        + " --tensor-model-parallel-size 1 --context-parallel-size 1 --sequence-parallel"
        + _REAL_DATA
        + f"--log-interval 1 --eval-iters 32 --eval-interval 100 --save-interval 1000 {_PROFILE} "
        "--distributed-timeout-minutes 60 --save {out}/ckpt --load {out}/ckpt "
        "--tensorboard-dir {out}/tensorboard",
        expected=(
            "--ckpt-format fsdp_dtensor: checkpoints here are torch.distributed.checkpoint directories",
        ),
    ),
    Recipe(
        "Qwen2.5 3B",
        f"{MLM} core_v0.16.0 examples/rl/model_configs/qwen_2p5_3b.sh (MODEL_OPTIONS and the default "
        "ENV_DEPENDENT)",
        """--micro-batch-size 2 --global-batch-size 512 --grpo-group-size 16 --grpo-prompts-per-step 32
        --grpo-iterations 1 --grpo-clamp-eps-lower 0.2 --grpo-clamp-eps-upper 0.2 --grpo-kl-beta 0.0
        --grpo-entropy-term-weight 0.0 --langrl-env-config {out}/env.yaml --calculate-per-token-loss
        --ckpt-format torch_dist --seq-length 8192 --inference-max-seq-length 8192
        --inference-max-batch-size 64
        --pretrained-checkpoint {out}/qwen2.5-3b --disable-bias-linear --add-qkv-bias --normalization RMSNorm
        --norm-epsilon 1e-6 --group-query-attention --num-query-groups 2 --no-masked-softmax-fusion
        --attention-softmax-in-fp32 --attention-dropout 0.0 --hidden-dropout 0.0 --weight-decay 0.0
        --position-embedding-type rope --rotary-percent 1.0 --rotary-base 1000000
        --use-rotary-position-embeddings
        --swiglu --num-layers 36 --hidden-size 2048 --ffn-hidden-size 11008 --num-attention-heads 16
        --max-position-embeddings 32768 --tokenizer-type HuggingFaceTokenizer --tokenizer-model {hf128256}
        --lr 0.000001 --lr-warmup-samples 0 --make-vocab-size-divisible-by 64 --clip-grad 1.0
        --rl-use-sequence-packing --rl-sequence-packing-algo fifo""",
        expected=(
            "give --data-path PREFIX (packed dataset) or --mock-data",
            "give --train-iters or --train-samples",
            "qwen2.5-3b does not exist",  # the script's checkpoint path; no fixture stands for it
        ),
    ),
    Recipe(
        "Llama-3.1 8B modelopt",
        f"{MLM} core_v0.16.0 examples/post_training/modelopt/finetune.sh with "
        "conf/meta-llama/Llama-3.1-8B-Instruct.sh (TP 1)",
        _LLAMA31_MODELOPT
        + _modelopt_finetune(tp=1, cp=1, ckpt="llama31_tp1"),
        expected=_MODELOPT_EXPECTED,
    ),
    Recipe(
        "Qwen2.5 7B modelopt",
        f"{MLM} core_v0.16.0 examples/post_training/modelopt/finetune.sh with "
        "conf/Qwen/Qwen2.5-7B-Instruct.sh",
        """--save-interval 100000 --micro-batch-size 1 --bf16 --no-masked-softmax-fusion --disable-bias-linear
        --add-qkv-bias --position-embedding-type rope --no-rope-fusion --normalization RMSNorm --swiglu
        --num-layers 28 --hidden-size 3584 --ffn-hidden-size 18944 --num-attention-heads 28
        --group-query-attention --num-query-groups 4 --kv-channels 128 --seq-length 4096
        --max-position-embeddings 32768 --tokenizer-type HuggingFaceTokenizer --padded-vocab-size 152064
        --make-vocab-size-divisible-by 1 --use-mcore-models --rotary-percent 1.0 --rotary-base 1000000
        --no-bias-swiglu-fusion --untie-embeddings-and-output-weights"""
        + _modelopt_finetune(tp=1, cp=1, ckpt="qwen25_7b"),
        expected=_MODELOPT_EXPECTED,
    ),
    Recipe(
        "Llama-3.1 8B TP 2 x CP 2",
        f"{MLM} core_v0.17.0 examples/post_training/modelopt/finetune.sh (TP=2 CP=2: --cp-comm-type p2p, "
        "--attention-backend fused) with conf/meta-llama/Llama-3.1-8B-Instruct.sh",
        _LLAMA31_MODELOPT
        + _modelopt_finetune(tp=2, cp=2, ckpt="llama31_tp2"),
        expected=_MODELOPT_EXPECTED,
    ),
    Recipe(
        "Llama-3.1 8B",
        f"{MLM} core_v0.16.0 docs/llama_mistral.md, Llama-3.1 'Launch model' (TP 1 for 8B)",
        """--tensor-model-parallel-size 1 --pipeline-model-parallel-size 1 --seq-length 8192
        --max-position-embeddings 131072 --tokenizer-type HuggingFaceTokenizer --tokenizer-model {hf128256}
        --load {llama31_tp1} --exit-on-missing-checkpoint --use-checkpoint-args --no-load-optim --no-load-rng
        --untie-embeddings-and-output-weights --normalization RMSNorm --position-embedding-type rope
        --no-masked-softmax-fusion --attention-softmax-in-fp32 --disable-bias-linear
        --transformer-impl transformer_engine --group-query-attention 8 --attention-dropout 0.0
        --hidden-dropout 0.0 --rotary-base 500000 --rotary-percent 1.0 --use-rope-scaling
        --ffn-hidden-size 14336 --num-attention-heads 32 --swiglu --bf16""",
        added=f"{_TRAINING} --data-path {{data8192}} --save {{out}}/run",
        expected=("--group-query-attention takes no value: 8",),
    ),
)  # fmt: skip

# config.json of the models the recipes load (from their Hugging Face repositories), converted without
# weights: the metadata tools/convert_hf_checkpoint.py records, which is all a dry run reads.
_LLAMA31 = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 128256,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072,
    "tie_word_embeddings": False,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
}
HF_CONFIGS = {
    "llama2_70b": ({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 8192, "intermediate_size": 28672,
        "num_attention_heads": 64, "num_hidden_layers": 80, "num_key_value_heads": 8, "vocab_size": 32000,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
    }, 8),
    "llama31_tp1": (_LLAMA31, 1),
    "llama31_tp2": (_LLAMA31, 2),
    "qwen25_7b": ({
        "architectures": ["Qwen2ForCausalLM"], "hidden_size": 3584, "intermediate_size": 18944,
        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "vocab_size": 152064,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
    }, 1),
}  # fmt: skip


def _converted_metadata(out: Path, config: dict, tp: int) -> str:
    """A checkpoint directory holding what the converter records for ``config`` at TP ``tp``, no weights."""
    from megatron_anchor.checkpoint import checkpoint_meta, commit_checkpoint, iter_dir_name, write_meta
    from megatron_anchor.convert.hf_config import model_meta, rope_from_hf, rope_meta
    from megatron_anchor.convert.hf_mapping import shape_from_hf_config
    from megatron_anchor.model.config_record import pad_vocab_size

    shape = shape_from_hf_config(config, pad_vocab_size(config["vocab_size"], 128, tp))
    record = {"model": model_meta(shape, config, 128), "rope": rope_meta(*rope_from_hf(config))}
    meta = checkpoint_meta(
        step=0, consumed_samples=0, record=record, tokenizer=None, schedule=None,
        sizes={"tp": tp, "cp": 1, "dp": 1, "world": tp}, weights_only=True, hf_config=config, files={},
    )  # fmt: skip
    tmp = out / (iter_dir_name(0) + ".tmp")
    tmp.mkdir(parents=True)
    write_meta(str(tmp), meta)
    commit_checkpoint(str(tmp), str(out / iter_dir_name(0)))
    return str(out)


def _sentencepiece_words(prefix: Path, size: int) -> str:
    """A SentencePiece word model of exactly ``size`` pieces (a Llama-2-sized vocabulary), in a second."""
    import sentencepiece as spm

    words = [f"w{i}" for i in range(size + 1000)]
    lines = (" ".join(words[i : i + 50]) for i in range(0, len(words), 50))
    spm.SentencePieceTrainer.train(
        sentence_iterator=lines, model_prefix=str(prefix), vocab_size=size, model_type="word",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
    )  # fmt: skip
    return f"{prefix}.model"


def gpt2_bpe_files(directory: Path, size: int = 50257) -> tuple[str, str]:
    """GPT-2-style vocab.json (the 256 byte symbols, words, ``<|endoftext|>`` last: ``size`` entries) and
    an empty merges.txt."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    symbols = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = {s: i for i, s in enumerate(symbols)}
    while len(vocab) < size - 1:
        vocab[f"\u0120w{len(vocab)}"] = len(vocab)
    vocab["<|endoftext|>"] = size - 1
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "gpt2-vocab.json").write_text(json.dumps(vocab))
    (directory / "gpt2-merges.txt").write_text("#version: 0.2\n")
    return str(directory / "gpt2-vocab.json"), str(directory / "gpt2-merges.txt")


def recipe_fixtures(tmp: Path) -> dict[str, str]:
    """Data, tokenizers and converted checkpoints the recipes' placeholders name, under ``tmp``."""
    from packed_data import write_hf_tokenizer, write_packed

    from megatron_anchor.training.startup import import_training_stack

    import_training_stack(uses_wandb=False)  # megatron-core as a run imports it (the converter needs it)
    fixtures = {"out": str(tmp / "out")}
    for seq in (2048, 4096, 8192):
        fixtures[f"data{seq}"] = write_packed(tmp / f"corpus{seq}_text_document", seq_length=seq, samples=40)
    fixtures["hf128256"] = write_hf_tokenizer(tmp / "hf128256", vocab=128256)
    fixtures["sp32000"] = _sentencepiece_words(tmp / "sp32000", 32000)
    fixtures["gpt2_vocab"], fixtures["gpt2_merges"] = gpt2_bpe_files(tmp / "gpt2")
    for name, (config, tp) in HF_CONFIGS.items():
        fixtures[name] = _converted_metadata(tmp / name, config, tp)
    return fixtures


def flag_outcomes(recipe: Recipe) -> dict[str, list[str]]:
    """The recipe's flags by what this trainer does with them: accepted, restated (or no effect: changes
    nothing here), refused (with a reason) and unknown (not a Megatron-LM flag either)."""
    from megatron_anchor.training.arguments import _segments, build_parser, megatron_status
    from megatron_anchor.training.megatron_flags import NO_EFFECT, RESTATED, lookup

    parsed = set(build_parser().option_names())
    out: dict[str, list[str]] = {"accepted": [], "restated": [], "refused": [], "unknown": []}
    dummy = {key: "X" for key in ("out", "data2048", "data4096", "data8192", "hf128256", "sp32000",
                                  "gpt2_vocab", "gpt2_merges", *HF_CONFIGS)}  # fmt: skip
    argv = recipe.argv(dummy)
    given = {t for t in argv if t.startswith("--")}
    for token, values in _segments(argv):
        if token is None:
            continue
        flag = token.split("=", 1)[0]
        if flag in parsed:
            kind = "restated" if lookup(flag) and lookup(flag).kind == RESTATED else "accepted"
        else:
            status = megatron_status(flag, [token.split("=", 1)[1]] if "=" in token else values, given)
            kind = "unknown" if status is None else "restated" if status[0] == NO_EFFECT else "refused"
        if flag not in out[kind]:
            out[kind].append(flag)
    return out


def recipes_table() -> str:
    """The README's table: each recipe, its flags by outcome, the dry run's other findings, its verdict."""
    lines = [
        "| recipe (source) | flags | accepted | restated or no effect | refused or unknown | other problems "
        "| dry run |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe in RECIPES:
        kinds = flag_outcomes(recipe)
        total = sum(len(v) for v in kinds.values())
        refused = kinds["refused"] + kinds["unknown"]
        errors = len(refused) + len(recipe.expected)
        verdict = "OK" if not errors else f"{errors} error{'s' if errors > 1 else ''}, one round"
        added = f" (with `{recipe.added.split(' --data-path')[0]}` added)" if recipe.added else ""
        lines.append(
            f"| {recipe.name} ({recipe.source}{added}) | {total} | {len(kinds['accepted'])} | "
            f"{len(kinds['restated'])} | {', '.join(f'`{f}`' for f in refused) or 'none'} | "
            f"{'; '.join(recipe.expected) or 'none'} | {verdict} |"
        )
    return "\n".join(lines)


RECIPES_START, RECIPES_END = "<!-- megatron-recipes-table:start -->", "<!-- megatron-recipes-table:end -->"


def with_recipes_table(readme: str) -> str:
    """``readme`` with the recipe table between its markers regenerated."""
    head, rest = readme.split(RECIPES_START, 1)
    _, tail = rest.split(RECIPES_END, 1)
    return f"{head}{RECIPES_START}\n{recipes_table()}\n{RECIPES_END}{tail}"


if __name__ == "__main__":  # python tests/training/megatron_recipes.py README.md
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    path = Path(sys.argv[1])
    path.write_text(with_recipes_table(path.read_text()))
