"""One round of errors: every flag and configuration problem of a command line in one report (a check that
needs a failed one skipped, never reported twice); --dry-run's split epochs and its one-line verdict."""

from __future__ import annotations

import pytest
from packed_data import write_packed
from train_harness import dry_run_in_process

from megatron_anchor.training import build_parser, validate_args
from megatron_anchor.training.arguments import gather_configuration
from megatron_anchor.training.report import ConfigError

TINY = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --mock-data --vocab-size 99"


def test_independent_flag_rules_are_all_reported_at_once():
    flags = f"{TINY} --train-iters 2 --train-samples 8 --kv-channels 32 --wandb-project p"
    flags += " --recompute-method block"
    with pytest.raises(ConfigError) as err:
        validate_args(build_parser().parse_args(flags.split()), 1)
    assert err.value.errors == [
        "give either --train-iters or --train-samples, not both",
        "--wandb-project needs --wandb-save-dir DIR (or --save, whose wandb/ it then uses)",
        "--recompute-method and --recompute-num-layers go with --recompute-granularity full",
        "--kv-channels 32: channels per head are --hidden-size / --num-attention-heads = 16 here",
    ]


def test_a_check_that_needs_a_failed_one_is_skipped_not_reported_twice():
    # TP 3 does not divide the world: the model and batch rules (heads by TP, DP arithmetic) are skipped.
    argv = f"{TINY} --train-iters 2 --tensor-model-parallel-size 3 --pipeline-model-parallel-size 2".split()
    _, report = gather_configuration(argv, 4)
    assert report.errors == [
        "--pipeline-model-parallel-size 2: pipeline parallelism is not supported (use 1)",
        "world size 4 is not divisible by TP 3 x CP 1",
    ]
    # A value that does not parse is reported once; the rules that read it are skipped.
    _, report = gather_configuration(f"{TINY} --train-iters 2 --seq-length abc".split(), 1)
    assert report.errors == ["--seq-length: invalid int value: 'abc'"]
    # Flag errors and rule errors together, in one report.
    argv = f"{TINY} --num-experts 4 --train-iters 2 --min-lr 1 --normalization RMS".split()
    _, report = gather_configuration(argv, 1)
    assert report.errors == [
        "--num-experts: mixture-of-experts (MoE) layers are not implemented: dense models only",
        "--normalization: invalid choice: 'RMS' (choose from 'LayerNorm', 'RMSNorm')",
        "--min-lr 1.0 must lie in [0, --lr 0.0003]",
    ]


def _dry_run(argv: list[str], monkeypatch, capsys) -> tuple[int, list[str], list[str]]:
    code, out, err = dry_run_in_process(argv, 2, monkeypatch, capsys)
    return code, out.strip().splitlines(), err.strip().splitlines()


def test_dry_run_says_the_epochs_of_each_split_and_ends_with_a_verdict(tmp_path, monkeypatch, capsys):
    a = write_packed(tmp_path / "a_text_document", seq_length=64, samples=40)
    b = write_packed(tmp_path / "b_text_document", seq_length=64, samples=20)
    base = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 --vocab-size 100"
    flags = f"{base} --train-iters 10 --global-batch-size 8 --eval-interval 5 --eval-iters 2 --split 90,10,0"
    code, out, err = _dry_run([*flags.split(), "--data-path", a], monkeypatch, capsys)
    assert code == 0 and err == [] and out[-1] == "dry run: OK"
    # megatron-core's split of 40 samples at 90/10/0: 36, 4, 0; 10 steps x 8 = 80 samples read.
    assert "ok: train split: 36 samples; the run reads 80 (2.22 epochs)" in out
    assert "ok: valid split: 4 samples; every evaluation reads 16 (4.00 epochs)" in out
    assert "ok: test split: empty (--split 90,10,0)" in out
    assert out.index("resolved configuration:") < len(out) - 1
    # A blend: each dataset's share of the 80 samples (megatron-core's ceil(weight x 80)), per dataset.
    code, out, _ = _dry_run([*flags.split(), "--data-path", "0.75", a, "0.25", b], monkeypatch, capsys)
    assert (
        f"ok: train split: 54 samples; the run reads 80 (36 of {a}: 1.67 epochs; 18 of {b}: 1.11 epochs)"
        in out
    )
    # A train split that rounds to no sample (1/1001 of 40) and an error in the flags: both, then the verdict.
    code, out, err = _dry_run(
        [*flags.split(), "--data-path", a, "--split", "1,1000,0", "--lr", "-1"], monkeypatch, capsys
    )
    assert code == 2 and out[-1] == "dry run: 2 errors (listed above): nothing started"
    assert err == [
        "error: --min-lr 0.0 must lie in [0, --lr -1.0]",
        "error: --split 1,1000,0 leaves the train split of --data-path empty",
    ]
