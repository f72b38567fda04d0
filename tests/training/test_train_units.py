"""Pure pieces of the trainer: LR schedule, flag validation, data indexing, FLOP counts, non-finite stop."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from train_harness import REPO, TINY, run_pretrain, validate_tiny

from megatron_anchor.attention import visibility_mask
from megatron_anchor.parallel.work import visible_pairs
from megatron_anchor.training import get_lr
from megatron_anchor.training.batches import MockPackedDataset, check_sample_length, rank_sample_indices


def test_get_lr_warmup_then_cosine_to_min():
    kw = dict(lr=1.0, min_lr=0.1, warmup_iters=4, decay_iters=14, decay_style="cosine")
    assert [get_lr(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert get_lr(4, **kw) == pytest.approx(1.0)
    assert get_lr(9, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert get_lr(14, **kw) == pytest.approx(0.1) and get_lr(100, **kw) == pytest.approx(0.1)


def test_get_lr_linear_and_constant():
    assert get_lr(5, lr=1.0, min_lr=0.0, warmup_iters=0, decay_iters=10, decay_style="linear") == 0.5
    assert get_lr(7, lr=0.3, min_lr=0.0, warmup_iters=0, decay_iters=10, decay_style="constant") == 0.3


@pytest.mark.parametrize(
    "extra, world, message",
    [
        (
            ["--context-parallel-size", "2", "--seq-length", "65"],
            2,
            "--seq-length 65 must be divisible by 2 for --context-parallel-size 2 with --cp-layout balanced",
        ),
        (
            ["--context-parallel-size", "2", "--seq-length", "66", "--cp-layout", "megatron"],
            2,
            "--seq-length 66 must be divisible by 4 for --context-parallel-size 2 with --cp-layout megatron",
        ),
        (["--tensor-model-parallel-size", "3"], 3, "not divisible by TP size 3"),
        (["--num-query-groups", "3"], 1, "not divisible by --num-query-groups 3"),
        (
            ["--global-batch-size", "5"],
            2,
            "must be a multiple of --micro-batch-size 1 x data-parallel size 2",
        ),
        (["--pipeline-model-parallel-size", "2"], 2, "pipeline parallelism is not supported"),
        (["--context-parallel-size", "2"], 3, "world size 3 is not divisible by TP 1 x CP 2"),
        (["--lr-warmup-iters", "50"], 1, "--lr-warmup-iters 50"),
        (["--save-interval", "2"], 1, "--save-interval needs --save"),
        (["--mask-cross-doc-labels"], 1, "--mock-data has no such labels"),
    ],
)
def test_validation_errors_name_the_flag(extra, world, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        validate_tiny(extra, world)


def test_validation_fills_derived_values():
    args = validate_tiny(["--context-parallel-size", "2", "--global-batch-size", "8"], world_size=4)
    assert (args.data_parallel_size, args.num_micro_batches, args.ffn_hidden_size) == (2, 4, 128)


def test_dry_run_prints_resolved_config_and_cli_errors_exit_2():
    env = dict(os.environ, PYTHONPATH=str(REPO), WORLD_SIZE="4")
    cmd = [
        sys.executable,
        "-m",
        "megatron_anchor.pretrain",
        *TINY,
        "--context-parallel-size",
        "2",
        "--dry-run",
    ]
    ok = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert '"data_parallel_size": 2' in ok.stdout and '"attention_mode": "anchor"' in ok.stdout
    bad = subprocess.run([*cmd, "--seq-length", "63"], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--seq-length 63 must be divisible by 2" in bad.stderr


def test_sample_length_must_be_seq_length_plus_one():
    dataset = MockPackedDataset(seq_length=32, vocab_size=64, num_samples=4)
    check_sample_length(dataset, 32, "train")
    with pytest.raises(ValueError, match="hold 33 tokens but --seq-length 64 needs 65"):
        check_sample_length(dataset, 64, "train")


def test_mock_samples_are_valid_packed_samples():
    item = MockPackedDataset(seq_length=48, vocab_size=64, num_samples=4, seed=3)[2]
    assert item["tokens"][0] == 0 and item["doc_ids"][0] == 0 and (item["doc_ids"][1:] > 0).all()
    assert torch.equal(item["labels"][:-1], item["tokens"][1:])
    assert (item["doc_ids"].diff() >= 0).all() and torch.equal(item["position_ids"], torch.arange(48))


def test_rank_sample_indices_partition_the_global_batch_at_any_dp():
    whole = rank_sample_indices(3, 8, 1, 0, n=100)
    assert whole == list(range(24, 32))
    assert rank_sample_indices(3, 8, 2, 0, 100) + rank_sample_indices(3, 8, 2, 1, 100) == whole
    assert rank_sample_indices(12, 8, 1, 0, n=100)[-1] == 3  # wraps around the dataset


@pytest.mark.parametrize("mode", ["causal", "intra_doc", "anchor"])
def test_visible_pairs_counts_the_attention_mask(mode):
    doc_ids = torch.tensor([[0, 1, 1, 1, 2, 2, 3, 3, 3, 3], [0, 1, 1, 1, 1, 1, 1, 1, 1, 2]])
    assert visible_pairs(doc_ids, mode) == int(visibility_mask(doc_ids, mode).sum())


def test_non_finite_loss_stops_with_step_and_rank_and_saves_nothing(tmp_path):
    flags = [
        *TINY,
        "--lr",
        "1e30",
        "--lr-warmup-iters",
        "0",
        "--clip-grad",
        "0",
        "--save",
        str(tmp_path / "ck"),
        "--save-interval",
        "1",
    ]
    records, proc = run_pretrain(1, flags, tmp_path, expect_fail=True)
    assert "non-finite loss" in proc.stderr and "at step 2 on rank 0" in proc.stderr
    assert (tmp_path / "ck" / "latest").read_text().strip() == "iter_0000001"
    assert sorted(p.name for p in (tmp_path / "ck").glob("iter_*")) == ["iter_0000001"]


def test_a_rank_error_line_leaves_in_one_write(monkeypatch):
    """The ranks share torchrun's stderr pipe: print's two writes (text, then newline) let another rank's
    line land between them (CI saw "...--vocab-size)error: rank 0: ..."); the line must be one write."""
    import io

    from megatron_anchor.pretrain import _fail

    read_end, write_end = os.pipe()
    text_writes: list[str] = []

    class RecordingStderr(io.TextIOBase):
        def write(self, text: str) -> int:
            text_writes.append(text)
            return len(text)

        def fileno(self) -> int:
            return write_end

    monkeypatch.setattr(sys, "stderr", RecordingStderr())
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit):
        _fail("sample 2 holds token id 300")
    os.close(write_end)
    assert os.read(read_end, 4096) == b"error: rank 1: sample 2 holds token id 300\n"
    assert text_writes == []
