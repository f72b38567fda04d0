"""Megatron-LM's flags: the table covers every recipe flag and every parser flag, the README shows the table,
a Llama recipe's command line passes the dry run, refused and unknown flags fail in one line each."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from packed_data import write_hf_tokenizer, write_packed

from megatron_anchor.training import build_parser, validate_args
from megatron_anchor.training.megatron_flags import (
    ACCEPTED,
    FLAGS,
    PROJECT,
    REFUSED,
    RESTATED,
    lookup,
    with_table,
)

REPO = Path(__file__).resolve().parents[2]

# Every flag of Megatron-LM's recipes examples/llama/train_llama3_8b_h100_fp8.sh and
# examples/gpt3/train_gpt3_175b_distributed.sh (tags core_v0.16.1 and main), and the Megatron flags
# users reach for in Llama recipes beyond them (virtual pipelines, TP overlap, W&B, data flags, ...).
RECIPE_FLAGS = """
--adam-beta1 --adam-beta2 --apply-layernorm-1p --attention-backend --attention-dropout --bf16
--calculate-per-token-loss --ckpt-format --clip-grad --context-parallel-size --cross-entropy-loss-fusion
--data-cache-path --data-path --decoupled-lr --decoupled-min-lr --disable-bias-linear
--distributed-timeout-minutes --empty-unused-memory-level --eval-interval --eval-iters --exit-duration-in-mins
--ffn-hidden-size --fp16 --fp8-amax-compute-algo --fp8-amax-history-len --fp8-format --fp8-param-gather
--global-batch-size --grad-reduce-in-bf16 --group-query-attention --hidden-dropout --hidden-size
--init-method-std --kv-channels --load --log-interval --log-throughput --lr --lr-decay-iters
--lr-decay-samples --lr-decay-style --lr-warmup-fraction --lr-warmup-samples --manual-gc
--max-position-embeddings --merge-file --micro-batch-size --min-lr --mock-data
--no-create-attention-mask-in-dataloader --no-mmap-bin-files --normalization --num-attention-heads
--num-layers --num-query-groups --num-workers --overlap-grad-reduce --overlap-param-gather
--pipeline-model-parallel-size --position-embedding-type --profile --profile-step-end --profile-step-start
--rampup-batch-size --rotary-base --rotary-percent --save --save-interval --seq-length --sequence-parallel
--split --step-batch-size-schedule --swiglu --tensor-model-parallel-size --tensorboard-dir --tiktoken-pattern
--tokenizer-model --tokenizer-type --train-iters --train-samples --untie-embeddings-and-output-weights
--use-distributed-optimizer --use-mcore-models --vocab-file --vocab-size --weight-decay
--transformer-impl --no-position-embedding --attention-softmax-in-fp32 --use-flash-attn --exit-interval
--recompute-granularity --recompute-method --recompute-num-layers --eod-mask-loss --reset-position-ids
--reset-attention-mask --wandb-project --wandb-exp-name --wandb-save-dir --tp-comm-overlap
--num-layers-per-virtual-pipeline-stage --virtual-pipeline-model-parallel-size --finetune --no-load-optim
--no-load-rng --override-opt-param-scheduler --exit-signal-handler
""".split()
# Table rows whose flags this parser does not define yet; empty once they are parsed.


def test_every_recipe_flag_has_a_row():
    missing = [f for f in RECIPE_FLAGS if lookup(f) is None]
    assert not missing
    kinds = {
        kind: sum(lookup(f).kind == kind for f in set(RECIPE_FLAGS)) for kind in (ACCEPTED, RESTATED, REFUSED)
    }
    assert sum(kinds.values()) == len(set(RECIPE_FLAGS)) and all(kinds.values()), kinds


def test_table_and_parser_agree():
    parsed = set(build_parser().option_names())
    for row in FLAGS:
        if row.kind in (ACCEPTED, RESTATED, PROJECT):
            assert row.flag in parsed, f"{row.flag} is a {row.kind} row but the parser lacks it"
        if row.kind == REFUSED:
            assert not any(name.startswith(row.flag.rstrip("*")) for name in parsed), row.flag
    unlisted = sorted(name for name in parsed if lookup(name) is None and name != "--help")
    assert not unlisted, f"flags without a row in megatron_flags.FLAGS: {unlisted}"


def test_readme_shows_the_table():
    readme = (REPO / "README.md").read_text()
    assert with_table(readme) == readme, "run: python -m megatron_anchor.training.megatron_flags README.md"


def test_help_is_quick_shows_defaults_and_warns_nothing():
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_anchor.pretrain", "--help"], cwd=REPO, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and proc.stderr == ""
    assert "global batches per validation (default: 100)" in proc.stdout
    assert "Adam beta2 (Llama recipes use 0.95) (default: 0.999)" in proc.stdout
    assert "--normalization {LayerNorm,RMSNorm}" in proc.stdout  # restated flags are listed
    # Without torch and megatron-core the parser starts in a fraction of a second; 10 s only guards a
    # badly loaded machine from failing the test while still catching the 7 s import of megatron-core x2.
    assert elapsed < 10, elapsed
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, megatron_anchor.pretrain; print(sorted(sys.modules))"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "'torch'" not in modules and "'megatron.core'" not in modules


def _parse_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_refused_and_unknown_flags_each_get_one_line(capsys):
    err = _parse_error(
        ["--num-layers", "2", "--fp8-format", "hybrid", "--fp16", "--lr-warmup", "3", "--normalisation", "x"],
        capsys,
    )
    lines = err.strip().splitlines()
    assert lines[0].endswith("error: 4 flag(s) not accepted:") and lines[-1] == "(see --help)"
    assert "--fp8-format: FP8 training is not implemented: use --bf16" in lines[1]
    assert "--fp16: fp16 needs loss scaling" in lines[2]
    assert "--lr-warmup: unknown flag; did you mean --lr-warmup-iters?" in lines[3]
    assert "--normalisation: unknown flag; did you mean --normalization?" in lines[4]
    assert "usage:" not in err


TINY = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --mock-data --vocab-size 99"


def _validate(extra: str, world_size: int = 1):
    return validate_args(build_parser().parse_args([*TINY.split(), *extra.split()]), world_size)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("--train-iters 2 --normalization LayerNorm", "--normalization LayerNorm: the layers use RMSNorm"),
        ("--train-iters 2 --kv-channels 32", "--kv-channels 32: channels per head are"),
        ("--train-iters 2 --attention-dropout 0.1", "--attention-dropout 0.1: there is no dropout"),
        (
            "--train-iters 2 --max-position-embeddings 32",
            "--max-position-embeddings 32 is below --seq-length",
        ),
        ("--train-iters 2 --position-embedding-type learned_absolute", "only rope"),
        ("--train-iters 2 --reset-attention-mask --attention-mode causal", "contradicts --attention-mode"),
        (
            "--train-iters 2 --share-embeddings-and-output-weights --untie-embeddings-and-output-weights",
            "contradicts --share-embeddings-and-output-weights",
        ),
        ("--train-iters 2 --ckpt-format torch", "--ckpt-format torch: checkpoints here"),
        (
            "--train-iters 2 --tokenizer-type Llama2Tokenizer --tokenizer-model t.model",
            "Llama2Tokenizer is not supported: use SentencePieceTokenizer with the same tokenizer.model",
        ),
        ("--train-iters 2 --train-samples 8", "either --train-iters or --train-samples"),
        ("--train-samples 8 --lr-warmup-iters 1", "give the schedule in samples"),
        ("--train-iters 4 --lr-warmup-fraction 0.5 --lr-warmup-iters 1", "give one of --lr-warmup-fraction"),
        ("--train-iters 2 --recompute-granularity full --recompute-num-layers 2", "uniform recompute"),
        ("--train-iters 2 --recompute-method block", "go with --recompute-granularity full"),
        ("--train-iters 2 --wandb-project p", "--wandb-project needs --wandb-save-dir"),
    ],
)
def test_contradicting_flags_are_named(extra, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        _validate(extra)


def test_sample_schedule_warmup_fraction_and_megatron_defaults():
    args = _validate("--global-batch-size 4 --train-samples 42 --lr-decay-samples 30 --lr-warmup-samples 9")
    assert (args.train_iters, args.lr_decay_iters, args.lr_warmup_iters) == (10, 7, 2)  # floor(samples / 4)
    args = _validate("--train-iters 40 --lr-decay-iters 30 --lr-warmup-fraction 0.1")
    assert args.lr_warmup_iters == 3
    args = _validate("--train-iters 2 --swiglu --reset-position-ids")
    assert args.ffn_hidden_size == 128 and args.position_ids == "reset"  # int(8/3 x 64 / 64) x 64
    assert args.restated_flags == ["--swiglu"]
    defaults = _validate("--train-iters 2")
    assert (defaults.adam_beta2, defaults.lr_decay_style, defaults.eval_iters, defaults.log_interval) == (
        0.999,
        "linear",
        100,
        100,
    )
    assert defaults.ffn_hidden_size == 256 and defaults.restated_flags == []
    block = _validate(
        "--train-iters 2 --recompute-granularity full --recompute-method block --recompute-num-layers 1"
    )
    assert block.recompute_num_layers == 1
    assert build_parser().parse_args([*TINY.split(), "--eod-mask-loss"]).mask_cross_doc_labels


def _llama_recipe(tmp: Path) -> list[str]:
    """Megatron-LM's examples/llama/train_llama3_8b_h100_fp8.sh (real-data branch) at a tiny size, with its
    refused flags (FP8, decoupled LR, layernorm-1p) left out and the not-yet-parsed ones dropped."""
    data = write_packed(tmp / "corpus_text_document", seq_length=64, samples=40)
    tokenizer = write_hf_tokenizer(tmp / "tokenizer", vocab=64)
    return f"""
        --use-mcore-models --num-layers 2 --hidden-size 64 --ffn-hidden-size 128 --num-attention-heads 4
        --group-query-attention --num-query-groups 2 --kv-channels 16 --seq-length 64
        --max-position-embeddings 64 --position-embedding-type rope --rotary-base 1000000 --rotary-percent 1.0
        --attention-dropout 0.0 --hidden-dropout 0.0 --swiglu --normalization RMSNorm --init-method-std 0.0134
        --attention-backend fused --untie-embeddings-and-output-weights --disable-bias-linear
        --micro-batch-size 1 --global-batch-size 8 --train-samples 800 --lr-decay-samples 640
        --lr-warmup-samples 80 --lr 0.00015 --min-lr 0.00001 --lr-decay-style cosine --clip-grad 1.0
        --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 --bf16 --grad-reduce-in-bf16
        --cross-entropy-loss-fusion --calculate-per-token-loss --manual-gc --empty-unused-memory-level 1
        --exit-duration-in-mins 235
        --tensor-model-parallel-size 2 --context-parallel-size 2 --sequence-parallel
        --use-distributed-optimizer --overlap-grad-reduce --overlap-param-gather
        --data-path {data} --tokenizer-type HuggingFaceTokenizer --tokenizer-model {tokenizer}
        --data-cache-path {tmp}/cache --split 99,1,0 --no-create-attention-mask-in-dataloader
        --no-mmap-bin-files --num-workers 1 --vocab-size 64
        --log-interval 1 --eval-iters 32 --eval-interval 100 --save-interval 1000 --log-throughput --profile
        --profile-step-start 4 --profile-step-end 6 --ckpt-format torch_dist --distributed-timeout-minutes 60
        --save {tmp}/ckpt --load {tmp}/ckpt --tensorboard-dir {tmp}/tensorboard
    """.split()


def test_megatron_llama_recipe_passes_the_dry_run(tmp_path):
    flags = _llama_recipe(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(REPO), WORLD_SIZE="8", PYTHONWARNINGS="default")
    cmd = [sys.executable, "-m", "megatron_anchor.pretrain", *flags, "--dry-run"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "dry run: 8 processes = TP 2 x CP 2 x DP 2; 100 steps of 8 x 64 tokens" in out
    assert f"note: data {tmp_path}/corpus_text_document: packed-anchor samples, 40 of 65 tokens" in out
    assert "ok: tokenizer HuggingFaceTokenizer" in out and ": 64 ids" in out
    assert "warning: --tensorboard-dir needs the tensorboard package" in out  # not installed here
    assert "--swiglu, --normalization RMSNorm" in out and "--num-workers 1" in out
    assert '"lr_warmup_iters": 10' in out and '"mask_cross_doc_labels": false' in out
    # The refused flags of the same recipe: one line each, nothing started.
    refused = subprocess.run(
        [
            *cmd,
            "--apply-layernorm-1p",
            "--decoupled-lr",
            "5e-4",
            "--fp8-format",
            "hybrid",
            "--fp8-param-gather",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2 and "4 flag(s) not accepted" in refused.stderr
    assert (
        "--decoupled-lr: one learning rate" in refused.stderr
        and "resolved configuration" not in refused.stdout
    )


def test_data_cache_path_keeps_megatron_cores_blend_indices(tmp_path):
    import torch.distributed as dist

    from megatron_anchor.parallel import free_port
    from megatron_anchor.training.build import build_datasets

    a = write_packed(tmp_path / "a_text_document", seq_length=64, samples=30)
    b = write_packed(tmp_path / "b_text_document", seq_length=64, samples=30)
    flags = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --vocab-size 100"
    flags += f" --train-iters 5 --global-batch-size 4 --data-path 0.6 {a} 0.4 {b} --split 9,1,0"
    flags += f" --data-cache-path {tmp_path / 'cache'}"
    args = validate_args(build_parser().parse_args(flags.split()), 1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        first = build_datasets(args, 128).train
        cached = sorted(p.name.split("-", 1)[1] for p in (tmp_path / "cache").iterdir())
        again = build_datasets(args, 128).train  # read back from the cache
    finally:
        dist.destroy_process_group()
    assert cached == [
        "BlendedDataset-train-dataset_index.npy", "BlendedDataset-train-dataset_sample_index.npy",
        "BlendedDataset-train-description.txt", "BlendedDataset-valid-dataset_index.npy",
        "BlendedDataset-valid-dataset_sample_index.npy", "BlendedDataset-valid-description.txt",
    ]  # fmt: skip
    assert [int(first[i]["tokens"][5]) for i in range(20)] == [int(again[i]["tokens"][5]) for i in range(20)]
