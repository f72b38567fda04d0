"""``--sequence-parallel`` with TP=2 trains exactly as one process does (fp32, gloo), with CP, DDP and FSDP2.

The single-process run of ``train_harness.reference_run`` is the reference: per-step losses and gradient
norms within 1e-4. Gradient clipping is active at every step, so a wrong norm (e.g. norm-weight gradients
left as per-rank partial sums) would also move the later losses.
"""

from __future__ import annotations

import json

import pytest
from train_harness import TINY, assert_losses_close, reference_run, run_pretrain, step_losses, validate_tiny

from megatron_anchor.training.startup import CONFIG_FILE

SP = ["--tensor-model-parallel-size", "2", "--sequence-parallel"]


def _assert_matches_reference(records: list[dict], workdir) -> None:
    config = json.loads((workdir / CONFIG_FILE).read_text())  # written beside --log-jsonl
    assert config["sequence_parallel"] is True  # the flag reached the run (it is dropped only at TP=1)
    _, losses, _, grad_norms = reference_run()
    assert_losses_close(step_losses(records), losses, rel=1e-4)
    assert_losses_close(step_losses(records, "grad_norm"), grad_norms, rel=1e-4)


def test_tp2_sequence_parallel_ddp_full_recompute_equals_single_process(tmp_path):
    records, proc = run_pretrain(2, [*TINY, *SP, "--recompute-granularity", "full"], tmp_path)
    _assert_matches_reference(records, tmp_path)


def test_tp2_cp2_sequence_parallel_fsdp2_selective_recompute_chunked_loss_equals_single_process(tmp_path):
    """Also the loss in recomputed chunks of 6 positions: 3 rows of each 16-row shard, gathered."""
    flags = [*TINY, *SP, "--context-parallel-size", "2", "--use-distributed-optimizer"]
    flags += ["--cross-entropy-chunk-size", "6"]
    records, proc = run_pretrain(4, [*flags, "--recompute-granularity", "selective"], tmp_path)
    _assert_matches_reference(records, tmp_path)


def test_sequence_parallel_without_tp_is_switched_off_with_a_notice(capsys):
    args = validate_tiny(["--sequence-parallel"], world_size=2)
    assert args.sequence_parallel is False
    assert "--sequence-parallel disabled" in capsys.readouterr().err
    assert validate_tiny(SP, world_size=2).sequence_parallel is True


@pytest.mark.parametrize(
    "extra, world, message",
    [
        (
            [*SP, "--seq-length", "65"],
            2,
            "each CP rank's 65 tokens .* must divide by --tensor-model-parallel",
        ),
        (["--grad-reduce-in-bf16"], 1, "--grad-reduce-in-bf16 applies to --bf16 training"),
    ],
)
def test_precision_and_sequence_parallel_errors_name_the_flag(extra, world, message):
    with pytest.raises(ValueError, match=message):
        validate_tiny(extra, world)
