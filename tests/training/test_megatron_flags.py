"""Megatron-LM's flags: every one of Megatron-LM's own (its parser, as data) is known here, accepted with
its meaning and default, restated, or refused by feature with one reason; only true typos get a suggestion;
one help text per flag for --help and the README."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_anchor.training import build_parser, validate_args
from megatron_anchor.training.flag_docs import (
    DIFFERENT_DEFAULTS,
    differing_defaults,
    unstated_differences,
    with_tables,
)
from megatron_anchor.training.megatron_flags import (
    ACCEPTED,
    FLAGS,
    PROJECT,
    REFUSED,
    RESTATED,
    lookup,
    not_accepted,
)
from megatron_anchor.training.megatron_lm import megatron_feature, megatron_lm_flags, megatron_lm_source

REPO = Path(__file__).resolve().parents[2]


def test_the_flag_list_is_megatron_lms_own():
    flags = megatron_lm_flags()
    assert megatron_lm_source() == "Megatron-LM core_v0.16.0 megatron/training/arguments.py"
    assert len(flags) == 682  # option strings of add_megatron_arguments (--help aside), Kitchen's included
    assert flags["--normalization"].default == "LayerNorm" and flags["--hidden-dropout"].default == 0.1
    assert flags["--disable-bias-linear"].dest == "add_bias_linear" and not flags["--swiglu"].takes_value
    # Generated from the flag names the Megatron-LM mirror's arguments.py spells out itself.
    mirror = Path("/work/.mirror/NVIDIA+Megatron-LM/repo")
    if mirror.is_dir():
        text = subprocess.run(
            ["git", "-C", str(mirror), "show", "core_v0.16.0:megatron/training/arguments.py"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        literal = {token.strip("'\"") for token in text.split() if token.startswith(("'--", '"--'))}
        literal = {t.rstrip("',\")") for t in literal if t.rstrip("',\")")[2:].replace("-", "").isalnum()}
        assert literal - set(flags) <= {"--no-"}, sorted(literal - set(flags))


def test_every_megatron_lm_flag_is_accepted_restated_or_refused_by_feature():
    unplaced = [f for f in megatron_lm_flags() if lookup(f) is None and megatron_feature(f) is None]
    assert not unplaced
    parsed = set(build_parser().option_names())
    for flag in megatron_lm_flags():
        assert flag in parsed or not_accepted(flag) is not None, flag


def test_table_parser_and_help_are_one_text():
    parser = build_parser()
    parsed = {s: a for a in parser._actions for s in a.option_strings}
    megatron = megatron_lm_flags()
    for row in FLAGS:
        if row.kind in (ACCEPTED, RESTATED, PROJECT):
            assert row.flag in parsed, f"{row.flag} is a {row.kind} row but the parser lacks it"
            action = parsed[row.flag]
            first = next(lookup(s) for s in action.option_strings if lookup(s))
            assert action.help == first.help, row.flag  # an alias's row says which flag it equals
            assert first is row or row.help == f"= {first.flag}" or row.help.startswith(f"= {first.flag}:")
        if row.kind == REFUSED:
            assert row.flag not in parsed and row.flag not in megatron, row.flag  # newer than the list
        # Megatron's names are Megatron's; this project's own flags are not Megatron flags.
        assert (row.flag in megatron) == (row.kind != PROJECT) or row.kind == REFUSED, row.flag
    unlisted = sorted(name for name in parsed if lookup(name) is None and name not in ("--help", "-h"))
    assert not unlisted, f"flags without a row in megatron_flags.FLAGS: {unlisted}"


def test_readme_shows_the_generated_tables():
    readme = (REPO / "README.md").read_text()
    assert with_tables(readme) == readme, "run: python -m megatron_anchor.training.flag_docs README.md"


def test_defaults_are_megatrons_but_the_listed_ones_which_are_said_at_start_up():
    assert set(differing_defaults(build_parser())) == set(DIFFERENT_DEFAULTS)
    args = build_parser().parse_args(["--lr", "1e-4", "--attention-dropout", "0"])
    line = unstated_differences(args)
    assert "--lr" not in line and "--attention-dropout" not in line
    assert "--micro-batch-size 1 (Megatron-LM requires it)" in line
    assert "--position-embedding-type rope (Megatron-LM: learned_absolute;" in line
    # This project's own flag whose default is not what Megatron-LM trains.
    assert line.endswith("; --attention-mode anchor (Megatron-LM: causal attention over the whole sample, "
                         "no --reset-attention-mask)")  # fmt: skip
    given = build_parser().parse_args(["--attention-mode", "causal"])
    assert "--attention-mode" not in unstated_differences(given)


def test_help_is_quick_shows_defaults_and_warns_nothing():
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_anchor.pretrain", "--help"], cwd=REPO, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and proc.stderr == ""
    assert "global batches per validation (default: 100)" in proc.stdout
    assert "Adam beta2 (Llama recipes use 0.95) (default: 0.999)" in proc.stdout
    assert "--normalization {LayerNorm,RMSNorm}" in proc.stdout and "--decoupled-lr" in proc.stdout
    # Without torch and megatron-core the parser starts in a fraction of a second; 10 s only guards a
    # badly loaded machine from failing the test while still catching the 7 s import of megatron-core x2.
    assert elapsed < 10, elapsed
    modules = subprocess.run(
        [sys.executable, "-c", "import sys, megatron_anchor.pretrain; print(sorted(sys.modules))"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "'torch'" not in modules and "'megatron.core'" not in modules


def _parse_error(argv: list[str], capsys) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" not in err
    lines = err.strip().splitlines()
    assert lines[-1] == "(see --help)"
    return [line.strip() for line in lines[1:-1]]


def test_megatron_features_are_refused_as_what_they_are_and_only_typos_get_suggestions(capsys):
    lines = _parse_error(
        ["--num-experts", "8", "--moe-token-dispatcher-type", "alltoall", "--fp8-format", "hybrid", "--fp16",
         "--lr-warmup", "3", "--normalisation", "x", "--num-layer", "2", "--grpo-kl-beta", "0.1"],
        capsys,
    )  # fmt: skip
    assert lines == [
        "--num-experts: mixture-of-experts (MoE) layers are not implemented: dense models only",
        "--moe-token-dispatcher-type: mixture-of-experts (MoE) layers are not implemented: dense models only",
        "--fp8-format: FP8/FP4 training is not implemented: use --bf16",
        "--fp16: fp16 needs loss scaling, which is not implemented: use --bf16",
        "--lr-warmup: unknown flag; did you mean --lr-warmup-iters?",
        "--normalisation: unknown flag; did you mean --normalization?",
        "--num-layer: unknown flag; did you mean --num-layers?",
        "--grpo-kl-beta: reinforcement learning (GRPO) is not implemented",
    ]


def test_values_switches_and_no_op_megatron_flags(capsys):
    lines = _parse_error(
        ["--num-layers", "two", "--group-query-attention", "8", "--normalization", "RMS",
         "--disable-bia-linear"],
        capsys,
    )  # fmt: skip
    assert lines == [
        "--group-query-attention takes no value: 8",
        "--disable-bia-linear: unknown flag; did you mean --disable-bias-linear?",
        "--num-layers: invalid int value: 'two'",
        "--normalization: invalid choice: 'RMS' (choose from 'LayerNorm', 'RMSNorm')",
    ]
    args = build_parser().parse_args(
        [
            "--no-bias-swiglu-fusion",
            "--expert-model-parallel-size",
            "1",
            "--log-params-norm",
            "--cp-comm-type",
            "p2p",
        ]
    )  # switches that change nothing here, and features at Megatron's off value: listed at start-up
    assert args.no_effect_flags == [
        "--no-bias-swiglu-fusion", "--expert-model-parallel-size 1", "--log-params-norm",
    ]  # fmt: skip
    assert args.cp_comm_type == ["p2p"]  # accepted with its meaning, not a no-op


TINY = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --mock-data --vocab-size 99"


def _validate(extra: str, world_size: int = 1):
    return validate_args(build_parser().parse_args([*TINY.split(), *extra.split()]), world_size)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("--train-iters 2 --kv-channels 32", "--kv-channels 32: channels per head are"),
        (
            "--train-iters 2 --attention-dropout 0.1",
            "--attention-dropout 0.1: the anchor attention has no dropout",
        ),
        (
            "--train-iters 2 --max-position-embeddings 32",
            "--max-position-embeddings 32 is below --seq-length",
        ),
        ("--train-iters 2 --position-embedding-type learned_absolute", "only rope"),
        ("--train-iters 2 --reset-attention-mask --attention-mode causal", "contradicts --attention-mode"),
        ("--train-iters 2 --ckpt-format torch", "--ckpt-format torch: checkpoints here"),
        (
            "--train-iters 2 --tokenizer-type Llama3Tokenizer --tokenizer-model t",
            "Llama3Tokenizer is not supported",
        ),
        ("--train-iters 2 --train-samples 8", "either --train-iters or --train-samples"),
        ("--train-samples 8 --lr-warmup-iters 1", "give the schedule in samples"),
        ("--train-iters 4 --lr-warmup-fraction 0.5 --lr-warmup-iters 1", "give one of --lr-warmup-fraction"),
        ("--train-iters 2 --recompute-granularity full --recompute-num-layers 2", "uniform recompute"),
        ("--train-iters 2 --recompute-method block", "go with --recompute-granularity full"),
        ("--train-iters 2 --wandb-project p", "--wandb-project needs --wandb-save-dir"),
        ("--train-iters 2 --decoupled-min-lr 1e-5", "--decoupled-min-lr needs --decoupled-lr"),
        ("--train-iters 2 --hidden-dropout 1", "--hidden-dropout 1.0 must lie in [0, 1)"),
        (
            "--train-iters 2 --exit-on-missing-checkpoint --load x --save x",
            "--load x holds no checkpoint yet",
        ),
        (
            "--train-iters 2 --padded-vocab-size 98",
            "--padded-vocab-size 98 is smaller than the vocabulary's 99",
        ),
        (
            "--train-iters 2 --vocab-file v.json --merge-file m.txt",
            "go with --tokenizer-type GPT2BPETokenizer",
        ),
    ],
)
def test_contradicting_flags_are_named(extra, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(message)):
        _validate(extra)


def test_sample_schedule_warmup_fraction_and_megatron_defaults():
    args = _validate("--global-batch-size 4 --train-samples 42 --lr-decay-samples 30 --lr-warmup-samples 9")
    assert (args.train_iters, args.lr_decay_iters, args.lr_warmup_iters) == (10, 7, 2)  # floor(samples / 4)
    args = _validate("--train-iters 40 --lr-decay-iters 30 --lr-warmup-fraction 0.1")
    assert args.lr_warmup_iters == 3
    args = _validate("--train-iters 2 --swiglu --reset-position-ids --recompute-activations")
    assert args.ffn_hidden_size == 128 and args.position_ids == "reset"  # int(8/3 x 64 / 64) x 64
    assert args.recompute_granularity == "selective" and args.restated_flags == []
    defaults = _validate("--train-iters 2")
    assert (defaults.adam_beta2, defaults.lr_decay_style, defaults.eval_iters, defaults.log_interval) == (
        0.999, "linear", 100, 100,
    )  # fmt: skip
    # Megatron-LM's architecture: LayerNorm, GeLU at 4 x hidden, linear biases, tied embeddings, dropout 0.1.
    assert (defaults.normalization, defaults.swiglu, defaults.ffn_hidden_size) == ("LayerNorm", False, 256)
    assert defaults.add_bias_linear and not defaults.untie_embeddings_and_output_weights
    assert (defaults.hidden_dropout, defaults.apply_layernorm_1p, defaults.restated_flags) == (0.1, False, [])
    block = _validate(
        "--train-iters 2 --recompute-granularity full --recompute-method block --recompute-num-layers 1"
    )
    assert block.recompute_num_layers == 1
    assert build_parser().parse_args([*TINY.split(), "--eod-mask-loss"]).mask_cross_doc_labels


def test_data_cache_path_keeps_megatron_cores_blend_indices(tmp_path):
    import torch.distributed as dist
    from packed_data import write_packed

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
