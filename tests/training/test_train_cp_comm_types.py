"""``--cp-comm-type`` a2a and a2a+p2p train exactly as one process does (gloo, fp32, 6 steps), a Megatron
recipe line with them passes the dry run, and their flag errors are one line naming the numbers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from train_harness import (
    REPO,
    TINY,
    assert_losses_close,
    reference_run,
    run_pretrain,
    step_losses,
    validate_tiny,
)


@pytest.mark.parametrize(
    "cp,comm",
    [(2, ["a2a"]), (4, ["a2a+p2p", "--hierarchical-context-parallel-sizes", "2", "2"])],
    ids=["a2a-cp2", "a2a+p2p-2x2"],
)
def test_all_to_all_types_equal_single_process(tmp_path, cp, comm):
    records, _ = run_pretrain(
        cp, [*TINY, "--context-parallel-size", str(cp), "--cp-comm-type", *comm], tmp_path
    )
    _, losses, _, grad_norms = reference_run()
    assert_losses_close(step_losses(records), losses, rel=1e-4)
    assert_losses_close(step_losses(records, "grad_norm"), grad_norms, rel=1e-4)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--cp-comm-type", "a2a+p2p"], "--cp-comm-type a2a+p2p needs --hierarchical-context-parallel-sizes"),
        (
            ["--cp-comm-type", "a2a+p2p", "--hierarchical-context-parallel-sizes", "4", "2"],
            "--hierarchical-context-parallel-sizes 4 2: their product 8 must equal --context-parallel-size 4",
        ),
        (
            [
                "--cp-comm-type",
                "a2a",
                "--num-attention-heads",
                "6",
                "--hidden-size",
                "96",
                "--num-query-groups",
                "6",
            ],
            "the all-to-all degree 4 .* must divide the 6 query heads",
        ),
        (["--cp-comm-type", "a2a", "p2p"], "--cp-comm-type a2a p2p: give one type"),
    ],
)
def test_comm_type_errors_name_the_flags_and_numbers(extra, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("+", r"\+")):
        validate_tiny(["--context-parallel-size", "4", *extra], world_size=4)


def test_the_degrees_and_the_kv_repetition_are_resolved_and_said(capsys):
    assert validate_tiny(["--context-parallel-size", "4", "--cp-comm-type", "a2a"], 4).cp_a2a_size == 4
    # TINY: 4 query heads, 2 K/V heads; degree 4 repeats each K/V head twice: 16 tokens x 2 x 16 x 4 bytes
    # x 3/4 = 3 KiB more per rank and layer for K and V.
    assert "each K/V head is repeated 2x before it, sending 0.00 MiB" in capsys.readouterr().err
    hierarchical = ["--cp-comm-type", "a2a+p2p", "--hierarchical-context-parallel-sizes", "2", "2"]
    assert validate_tiny(["--context-parallel-size", "4", *hierarchical], 4).cp_a2a_size == 2
    assert "repeated" not in capsys.readouterr().err
    assert validate_tiny(["--context-parallel-size", "4"], 4).cp_a2a_size == 1  # p2p: the ring, no all-to-all


def test_megatron_a2a_p2p_recipe_passes_the_dry_run():
    """Megatron-LM core_v0.16.0's functional test gpt3_mcore_te_tp1_pp2_cp4_a2a_p2p (model_config.yaml) at
    a tiny size on mock data, without its pipeline stages and the flags this trainer does not have."""
    flags = """
        --num-layers 2 --hidden-size 64 --num-attention-heads 8 --micro-batch-size 4 --global-batch-size 32
        --seq-length 64 --max-position-embeddings 64 --train-iters 50 --lr-decay-iters 320000 --split 949,50,1
        --lr 0.00015 --lr-decay-style cosine --min-lr 1.0e-5 --weight-decay 1e-2 --clip-grad 1.0
        --lr-warmup-fraction .01 --log-interval 1 --eval-interval 1000 --eval-iters 10
        --tensor-model-parallel-size 1 --context-parallel-size 4 --cp-comm-type a2a+p2p
        --hierarchical-context-parallel-sizes 2 2 --hidden-dropout 0.0 --attention-dropout 0.0
        --no-gradient-accumulation-fusion --attention-softmax-in-fp32 --use-mcore-models
        --ckpt-format torch_dist --bf16 --attention-backend flash --mock-data --vocab-size 128
    """.split()
    env = dict(os.environ, PYTHONPATH=str(REPO), WORLD_SIZE="8", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "megatron_anchor.pretrain", *flags, "--dry-run"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "dry run: 8 processes = TP 1 x CP 4 x DP 2" in proc.stdout
    assert '"cp_comm_type": "a2a+p2p"' in proc.stdout and '"cp_a2a_size": 2' in proc.stdout
