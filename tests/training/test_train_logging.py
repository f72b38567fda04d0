"""The training log: interval averages against a per-step reference run, readable lines, Megatron's tags in an
offline W&B run, the start-up summary and config file, profiling, --exit-interval, no start-up warnings."""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from train_harness import REPO, TINY, reference_run

from megatron_anchor.parallel import free_port
from megatron_anchor.training import metrics
from megatron_anchor.training.step_log import format_train_line, megatron_scalars


def test_readable_numbers_and_durations():
    assert [metrics.readable(v) for v in (999, 12345, 2.1e6, 3.456e9, 0.000353)] == [
        "999", "12.3K", "2.1M", "3.46B", "0.000353",
    ]  # fmt: skip
    assert [metrics.readable_duration(s) for s in (3.21, 75, 4000, 200000)] == [
        "3.2s",
        "1m 15s",
        "1h 06m",  # whole minutes
        "2d 07h",
    ]


@pytest.mark.parametrize(
    "device, bf16, peak",
    [("NVIDIA H100 80GB HBM3", True, 989.0), ("NVIDIA H100 PCIe", True, 756.0), ("NVIDIA H200", True, 989.0),
     ("NVIDIA A100-SXM4-80GB", True, 312.0), ("NVIDIA A100-SXM4-80GB", False, None),
     ("NVIDIA L4", True, None)],
)  # fmt: skip
def test_mfu_peak_from_the_gpu_table(monkeypatch, device, bf16, peak):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: device)
    got, why = metrics.peak_tflops(None, bf16)
    assert got == peak and (device in why)
    assert metrics.peak_tflops(500.0, bf16)[0] == 500.0  # --peak-tflops wins


def test_log_line_and_megatron_tags():
    record = {
        "step": 200, "loss": 2.10434, "lr": 1.95e-5, "grad_norm": 0.4123, "iteration_time_s": 31.2,
        "tokens_per_s": 67216.4, "tflops_per_gpu": 401.7, "mfu": 0.4062, "mem_gib": 61.27,
        "global_batch_size": 32, "consumed_samples": 6400, "consumed_tokens": 419430400, "eta_s": 24960.0,
    }  # fmt: skip
    assert format_train_line(record, 1000) == (
        "step 200/1000 | loss 2.1043 | lr 1.950e-05 | grad 0.412 | 31.2 s/step | 67.2K tok/s | "
        "402 TFLOP/s/GPU | MFU 40.6% | mem 61.3 GiB | seen 419M tok, 6.4K samples | ETA 6h 56m"
    )
    tags = megatron_scalars(record)
    assert tags["lm loss"] == record["loss"] and tags["learning-rate"] == record["lr"]
    assert tags["iteration-time"] == 31.2 and tags["throughput"] == 401.7 and tags["batch-size"] == 32
    assert tags["mem-max-allocated-bytes"] == 61.27 * 2**30 and "step" not in tags


def _wandb_history(run_dir: str) -> dict[int, dict[str, float]]:
    """``{step: {tag: value}}`` read back from an offline run's ``.wandb`` file."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    store = datastore.DataStore()
    store.open_for_scan(glob.glob(os.path.join(run_dir, "run-*.wandb"))[0])
    history: dict[int, dict[str, float]] = {}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(record.history.step.num, {}).update(items)
    return history


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """2 processes, CP 2, FSDP2, the first of 2 layers recomputed, logs every 3 steps, stops at step 4."""
    work = tmp_path_factory.mktemp("logged")
    flags = [
        *TINY, "--context-parallel-size", "2", "--use-distributed-optimizer",
        *"--recompute-granularity full --recompute-method block --recompute-num-layers 1".split(),
        "--log-interval", "3", "--exit-interval", "4", "--save", str(work / "ckpt"),
        "--log-jsonl", str(work / "logs" / "new" / "train.jsonl"),
        "--wandb-project", "anchor-test", "--wandb-exp-name", "tiny", "--wandb-save-dir", str(work / "wandb"),
        *"--profile --use-pytorch-profiler --profile-step-start 1 --profile-step-end 2".split(),
    ]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
    ]
    cmd += ["--master-port", str(free_port()), "-m", "megatron_anchor.pretrain", *flags]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # every warning shows
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    records = [json.loads(line) for line in (work / "logs" / "new" / "train.jsonl").read_text().splitlines()]
    return work, proc, records


def test_the_summary_counts_a_plain_files_samples_as_the_data_plan_and_megatron_core_do(tmp_path):
    import numpy as np
    from packed_data import write_plain

    from megatron_anchor.data import AnchorTokens, build_train_valid_test_datasets
    from megatron_anchor.data.layouts import PLAIN
    from megatron_anchor.training.data_plan import samples_per_split
    from megatron_anchor.training.summary import distinct_samples

    prefix = write_plain(tmp_path / "m", [np.r_[np.arange(3, 103), 2]] * 40)  # 40 documents of 101 tokens
    splits = [
        build_train_valid_test_datasets([prefix], "1,0,0", 64, 1, (n, 0, 0), tokens=AnchorTokens(1, 2),
                                        path_to_cache=str(tmp_path / "c"))[0]  # fmt: skip
        for n in (10, 200)
    ]
    one_epoch = 40 * 101 // 64
    assert len(splits[0]) == one_epoch and len(splits[1]) > 2 * one_epoch  # megatron-core's sample index
    assert [distinct_samples(s) for s in splits] == [one_epoch] * 2  # not the 40 documents
    assert samples_per_split(prefix, PLAIN, 64, "1,0,0") == [one_epoch, 0, 0]  # the dry run's count


def test_start_up_prints_a_summary_and_no_warnings(logged_run):
    work, proc, _ = logged_run
    assert not re.search(r"warn", proc.stderr, re.IGNORECASE), proc.stderr  # both processes
    out = proc.stdout
    assert "parallel: 2 processes = TP 1 x CP 2 x DP 1 | FSDP2 (--use-distributed-optimizer)" in out
    assert "fp32, recompute full (1 of 2 layers)" in out  # counted on the built model
    assert "steps: 0 -> 6 | 4 samples x 64 = 256 tokens per step" in out
    assert "note: megatron-core runs without Transformer Engine/apex, on: " in out
    config = json.loads((work / "ckpt" / "train_config.json").read_text())
    assert config["recompute_num_layers"] == 1 and config["exit_interval"] == 4
    assert "resolved configuration" not in out and '"adam_beta1"' not in out  # no JSON dump on stdout


def test_interval_averages_match_the_per_step_reference(logged_run):
    _, proc, records = logged_run
    reference = reference_run()[1]  # per-step losses of the same flags, one process, logged every step
    train = {r["step"]: r for r in records if "loss" in r}
    assert sorted(train) == [1, 3, 4]  # the first step, an interval, the exit
    expected = {1: reference[1], 3: (reference[2] + reference[3]) / 2, 4: reference[4]}
    for step, want in expected.items():
        assert train[step]["loss"] == pytest.approx(want, rel=1e-4), step
        assert train[step]["consumed_samples"] == 4 * step and train[step]["consumed_tokens"] == 256 * step
        assert train[step]["mem_gib"] > 0 and train[step]["mfu"] is None  # no GPU, no --peak-tflops
    assert re.search(r"step 3/6 \| loss \d\.\d{4} \| lr [\d.]+e-0\d \| grad [\d.]+ \| [\d.]+ s/step \| "
                     r"[\d.]+K? tok/s \| .* \| seen 768 tok, 12 samples \| ETA", proc.stdout)  # fmt: skip
    assert next(r for r in records if "time_to_first_step_s" in r)["step"] == 1


def test_exit_interval_saves_and_stops(logged_run):
    work, _, records = logged_run
    assert {"step": 4, "exit": "--exit-interval 4 reached"} in records
    assert max(r["step"] for r in records) == 4
    assert (work / "ckpt" / "latest").read_text().strip() == "iter_0000004"


def test_wandb_offline_run_holds_megatron_tags(logged_run):
    work, _, records = logged_run
    runs = glob.glob(str(work / "wandb" / "wandb" / "offline-run-*"))
    assert len(runs) == 1
    history = _wandb_history(runs[0])
    for record in (r for r in records if "loss" in r):
        logged = history[record["step"]]
        assert logged["lm loss"] == pytest.approx(record["loss"], rel=1e-12)
        assert logged["learning-rate"] == pytest.approx(record["lr"]) and logged["batch-size"] == 4
        assert logged["iteration-time"] == pytest.approx(record["iteration_time_s"])


def test_profiler_traces_the_requested_steps(logged_run):
    work, _, _ = logged_run
    traces = glob.glob(str(work / "ckpt" / "profile" / "*.pt.trace.json"))
    assert len(traces) == 1  # rank 0 only (--profile-ranks 0)
    events = json.loads(open(traces[0]).read())["traceEvents"]
    assert any(e.get("name", "").startswith("aten::") for e in events)


def test_tensorboard_gets_megatron_tags_and_their_vs_samples_twins(monkeypatch, tmp_path):
    """A stand-in for torch.utils.tensorboard (the tensorboard package is not installed here)."""
    import argparse
    import types

    from megatron_anchor.training.step_log import StepLogger

    scalars: list[tuple[str, float, int]] = []

    class SummaryWriter:
        def __init__(self, log_dir):
            assert log_dir == str(tmp_path)

        def add_scalar(self, tag, value, step):
            scalars.append((tag, value, step))

        def close(self):
            scalars.append(("closed", 0.0, 0))

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=SummaryWriter)
    )
    args = argparse.Namespace(
        train_iters=10, log_jsonl=None, tensorboard_dir=str(tmp_path), wandb_project=None
    )
    logger = StepLogger(args, enabled=True)
    logger.log_eval(step=5, loss=2.0, consumed_samples=40)
    logger.close()
    assert ("lm loss validation", 2.0, 5) in scalars and ("lm loss validation vs samples", 2.0, 40) in scalars
    ppl = [value for tag, value, _ in scalars if tag == "lm loss validation ppl"]
    assert ppl == [pytest.approx(7.389056)] and scalars[-1][0] == "closed"


def test_a_log_jsonl_on_a_full_disk_is_one_warning_and_training_goes_on(capsys):
    """/dev/full fails every write with ENOSPC, as a full disk does: the run used to end in an OSError
    traceback at its first step record; now one warning, and later records go to stdout only."""
    import argparse

    from megatron_anchor.training.step_log import StepLogger

    args = argparse.Namespace(train_iters=10, log_jsonl="/dev/full", tensorboard_dir=None, wandb_project=None)
    logger = StepLogger(args, enabled=True)
    logger.log_eval(step=5, loss=2.0, consumed_samples=40)
    logger.log_event(6, "saved checkpoint iter_0000006")
    logger.close()
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "warning: --log-jsonl /dev/full: No space left on device (errno 28): its records stop before step 5; "
        "training goes on"
    ]
    assert "validation loss 2.0000" in out and "step 6/10 | saved checkpoint iter_0000006" in out
