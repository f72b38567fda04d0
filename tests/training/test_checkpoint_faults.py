"""Faults around checkpoints, with real processes: damaged files, a failing save, a stalled rank, SIGTERM
preemption; and the staged-extension flags --finetune / --no-load-optim / --no-load-rng."""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import signal
import time

import numpy as np
import pytest
import torch
from crafted_pickle import RunsOnUnpickle
from train_harness import (
    TINY,
    copy_reference_checkpoint,
    read_log,
    reference_run,
    run_pretrain,
    start_pretrain,
    step_losses,
    worker_pids,
)

from megatron_anchor.checkpoint import CheckpointError, read_meta, verify_checkpoint
from megatron_anchor.training.checkpoint import _rng_state, _set_rng_state, read_rng_state
from megatron_anchor.training.startup import CONFIG_FILE
from tests.disk_limits import file_size_limit

# The reference run's schedule (6 steps) kept while a resume trains further.
SAME_SCHEDULE = ["--lr-decay-iters", "6"]


def _zero_middle_page(data: bytearray) -> None:
    middle = len(data) // 2 // 4096 * 4096
    data[middle : middle + 4096] = bytes(4096)


@pytest.mark.parametrize("damage", ["zeroed page", "random bytes", "truncated"])
def test_damaged_file_is_named_and_the_previous_checkpoint_suggested(tmp_path, damage):
    ckpt = copy_reference_checkpoint(tmp_path)
    shard = ckpt / "iter_0000006" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    if damage == "zeroed page":
        _zero_middle_page(data)
    elif damage == "random bytes":
        data[5000:5016] = os.urandom(16)
    else:
        data = data[: len(data) // 2]
    shard.write_bytes(bytes(data))
    meta = json.loads((ckpt / "iter_0000006" / "meta.json").read_text())
    verify_checkpoint(
        str(ckpt / "iter_0000003"), json.loads((ckpt / "iter_0000003" / "meta.json").read_text())
    )
    reason = "has .* bytes, .* were written" if damage == "truncated" else "is damaged"
    with pytest.raises(CheckpointError, match=f"{shard} {reason}.*--load {ckpt / 'iter_0000003'}"):
        verify_checkpoint(str(ckpt / "iter_0000006"), meta)


def test_trainer_refuses_a_damaged_checkpoint(tmp_path):
    ckpt = copy_reference_checkpoint(tmp_path)
    shard = ckpt / "iter_0000006" / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    _zero_middle_page(data)  # 1,024 fp32 values inside a tensor: loaded silently without checksums
    shard.write_bytes(bytes(data))
    flags = [*TINY, "--train-iters", "8", *SAME_SCHEDULE, "--load", str(ckpt)]
    records, proc = run_pretrain(1, flags, tmp_path, expect_fail=True)
    assert f"error: rank 0: checkpoint file {shard} is damaged" in proc.stderr
    assert f"load the previous checkpoint instead: --load {ckpt / 'iter_0000003'}" in proc.stderr
    assert not [r for r in records if "loss" in r] and "megatron_anchor/" not in proc.stderr  # no traceback


def test_failed_save_names_path_errno_and_free_space_and_the_next_save_cleans_up(tmp_path):
    """A save that cannot write (here a file-size limit: EFBIG, as ENOSPC on a full disk) stops the run on
    both ranks with one line; 'latest' keeps the previous checkpoint; the next save removes the .tmp."""
    ckpt = copy_reference_checkpoint(tmp_path)
    shutil.rmtree(ckpt / "iter_0000006")
    (ckpt / "latest").write_text("iter_0000003\n")
    flags = [*TINY, "--load", str(ckpt), "--save", str(ckpt)]
    _, proc = run_pretrain(2, flags, tmp_path, expect_fail=True, preexec_fn=file_size_limit(200_000))
    tmp = ckpt / "iter_0000006.tmp"
    assert f"error: rank 0: writing checkpoint {tmp} failed on rank " in proc.stderr
    assert "[Errno 27 EFBIG] File too large:" in proc.stderr  # the probe write meets the same limit
    assert f"free on {tmp}); 'latest' still names the previous checkpoint" in proc.stderr
    assert "megatron_anchor/" not in proc.stderr and tmp.is_dir()
    assert (ckpt / "latest").read_text().strip() == "iter_0000003"
    run_pretrain(
        1, [*TINY, "--train-iters", "5", *SAME_SCHEDULE, "--load", str(ckpt), "--save", str(ckpt)], tmp_path
    )
    kept = sorted(p.name for p in ckpt.iterdir())
    tracker = "latest_checkpointed_iteration.txt"
    assert kept == ["iter_0000003", "iter_0000005", "latest", tracker, CONFIG_FILE]  # config beside them


def test_stalled_rank_ends_the_job_within_the_timeout(tmp_path):
    """Rank 1 stopped (SIGSTOP) mid-run: rank 0's next collective gives up after
    --distributed-timeout-minutes 0.1 (6 s) with a one-line message and exits; torchrun then ends the job
    (after 30 s of its own for a stopped process: the test kills it at once). With gloo's default the job
    would wait 30 minutes."""
    flags = [*TINY, "--train-iters", "100000", "--distributed-timeout-minutes", "0.1"]
    job = start_pretrain(2, flags, tmp_path, [])
    try:
        job.wait_for_step(2)
        workers = worker_pids(job.proc.pid)
        os.kill(workers[1], signal.SIGSTOP)
        stopped = time.monotonic()
        reported = job.wait_for(lambda: "error: rank 0: a collective failed" in job.err(), "the error", 60)
        job.wait_for(lambda: not os.path.exists(f"/proc/{workers[0]}"), "rank 0's exit", 30)
        os.kill(workers[1], signal.SIGKILL)
        job.proc.wait(timeout=60)
    finally:
        job.proc.kill()
    assert job.proc.returncode != 0
    assert "Timed out waiting 6000ms" in job.err() and "--distributed-timeout-minutes" in job.err()
    assert 6 <= reported - stopped < 40, reported - stopped  # 6 s, plus slack for a loaded machine


def test_sigterm_saves_after_the_step_and_the_resume_matches_an_uninterrupted_run(tmp_path):
    """SIGTERM to every process of a 2-rank torchrun job, as Slurm sends it (torchrun told to leave it to the
    workers): the step in flight finishes, a checkpoint is saved, the job exits 0; resuming from it gives
    the losses of a run that was never interrupted."""
    save = tmp_path / "ckpt"
    schedule = ["--lr-decay-iters", "400", "--lr-warmup-iters", "2"]
    flags = [*TINY, *schedule, "--exit-signal-handler", "--load", str(save), "--save", str(save)]

    def ignoring_sigterm():  # the launcher's `trap '' TERM`
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    launcher = ["--signals-to-handle", "SIGINT,SIGHUP,SIGQUIT"]
    job = start_pretrain(
        2, [*flags, "--train-iters", "400"], tmp_path / "a", launcher, ignoring_sigterm
    )
    try:
        job.wait_for_step(3)
        for pid in [job.proc.pid, *worker_pids(job.proc.pid).values()]:  # torchrun runs each in its session
            os.kill(pid, signal.SIGTERM)
        job.proc.wait(timeout=90)
    finally:
        job.proc.kill()
    assert job.proc.returncode == 0, job.err()[-3000:]
    records = read_log(job.log)
    stop = next(r for r in records if "exit" in r)
    k = stop["step"]
    assert stop["exit"] == "SIGTERM received (--exit-signal-handler)" and max(step_losses(records)) == k
    assert (save / "latest").read_text().strip() == f"iter_{k:07d}" and k < 400
    end = str(k + 4)
    resumed, proc = run_pretrain(2, [*flags, "--train-iters", end], tmp_path / "b")
    assert (
        f"resumed from {save / f'iter_{k:07d}'} at step {k}: model and optimizer; RNG restored" in proc.stdout
    )
    whole, _ = run_pretrain(2, [*TINY, *schedule, "--train-iters", end], tmp_path / "c")
    after = {s: v for s, v in step_losses(whole).items() if s > k}
    got = step_losses(resumed)
    assert sorted(got) == sorted(after) and len(after) == 4
    diff = max(abs(got[s] - v) for s, v in after.items())
    print(f"SIGTERM after step {k}; max |loss difference| over steps {k + 1}-{k + 4}: {diff:.3g}")
    assert diff <= 1e-6 * max(after.values())


def test_no_load_optim_keeps_the_weights_and_step_and_starts_a_fresh_optimizer(tmp_path):
    ckpt, full, _, _ = reference_run()
    flags = [*TINY, "--load", str(ckpt / "iter_0000003"), "--no-load-optim", "--no-load-rng"]
    records, proc = run_pretrain(1, flags, tmp_path)
    assert "at step 3: model only (--no-load-optim); RNG from --seed" in proc.stdout
    losses = step_losses(records)
    assert sorted(losses) == [4, 5, 6]
    assert abs(losses[4] - full[4]) <= 1e-6 * full[4]  # computed before any update: the loaded weights
    assert abs(losses[5] - full[5]) > 1e-4  # after one step of a fresh Adam: another trajectory


def test_finetune_starts_a_new_stage_at_step_0_with_a_new_length_and_rope_base(tmp_path):
    """The next stage of a context extension from a trained checkpoint, without export and import."""
    ckpt, _, _, _ = reference_run()
    flags = [*TINY, "--load", str(ckpt), "--finetune", "--train-iters", "2", "--seq-length", "128"]
    flags += ["--rotary-base", "40000", "--save", str(tmp_path / "stage2")]
    records, proc = run_pretrain(1, flags, tmp_path)
    assert "at step 0: model weights only (--finetune); RNG from --seed" in proc.stdout
    assert "--rotary-base 40000.0 replaces the checkpoint's 10000.0" in proc.stdout
    assert sorted(step_losses(records)) == [1, 2]
    meta = json.loads((tmp_path / "stage2" / "iter_0000002" / "meta.json").read_text())
    assert meta["rope"]["rotary_base"] == 40000.0 and meta["schedule"]["seq_length"] == 128


def test_hand_edited_meta_json_is_refused_naming_it(tmp_path):
    """A deleted crc32 key or a deleted file entry (the file then damaged) in meta.json: one line naming
    meta.json; no file of a checkpoint loads unchecked."""
    ckpt = copy_reference_checkpoint(tmp_path)
    where = ckpt / "iter_0000006"
    meta_path, shard = where / "meta.json", where / "__0_0.distcp"
    meta = json.loads(meta_path.read_text())
    no_crc = copy.deepcopy(meta)
    del no_crc["files"]["__0_0.distcp"]["crc32"]
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(str(where), no_crc)
    assert str(err.value) == (
        f"{meta_path}: the entry of __0_0.distcp has no 'crc32' (each file needs its size and crc32)"
    )
    data = bytearray(shard.read_bytes())
    _zero_middle_page(data)
    shard.write_bytes(bytes(data))
    unlisted = copy.deepcopy(meta)
    del unlisted["files"]["__0_0.distcp"]
    with pytest.raises(CheckpointError) as err:
        verify_checkpoint(str(where), unlisted)
    assert str(err.value) == (
        f"{shard} is not listed in {meta_path}, so its checksum cannot be checked (was meta.json edited?)"
    )
    with pytest.raises(CheckpointError, match=f"{meta_path} lists no files with checksums"):
        verify_checkpoint(str(where), {k: v for k, v in meta.items() if k != "files"})


def test_a_shape_changed_in_meta_json_is_an_error_naming_it(tmp_path):
    ckpt = copy_reference_checkpoint(tmp_path)
    meta_path = ckpt / "iter_0000006" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["model"]["hidden_size"] = 128  # the model flags left out are taken from here
    meta_path.write_text(json.dumps(meta))
    run = TINY[TINY.index("--seq-length") :]
    _, proc = run_pretrain(1, [*run, "--train-iters", "8", *SAME_SCHEDULE, "--load", str(ckpt)], tmp_path,
                           expect_fail=True)  # fmt: skip
    assert proc.stderr.splitlines()[0] == (
        f"error: rank 0: tensor embedding.word_embeddings.weight is stored as [256, 64], the model's is "
        f"[256, 128]: the model built from {meta_path} and the flags does not match the tensors beside it "
        f"(was it edited?)"
    )
    assert "megatron_anchor/" not in proc.stderr


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m.update(step="four"), "'step' is \"four\", not a whole number"),
        (lambda m: m.pop("step"), "it records no 'step'"),
        (lambda m: m.update(tp="1"), "'tp' is \"1\", not a whole number"),
        (lambda m: m.update(model=None), "'model' is null, not a JSON object"),
        (lambda m: m["model"].update(hidden_size="64"), "'model.hidden_size' is \"64\", not a whole number"),
        (lambda m: m.update(schedule=[1]), "'schedule' is [1], not a JSON object or null"),
        (lambda m: m.update(tokenizer=5), "'tokenizer' is 5, not a JSON object or null"),
    ],
)
def test_a_value_of_another_kind_in_meta_json_is_one_line_naming_it(tmp_path, edit, problem):
    """A hand-edited value of the wrong kind (a string step, a null section) is refused by read_meta."""
    ckpt = copy_reference_checkpoint(tmp_path)
    meta_path = ckpt / "iter_0000006" / "meta.json"
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        read_meta(str(meta_path.parent))
    assert str(err.value) == f"{meta_path}: {problem} (was it edited?)"


def test_the_trainer_names_a_hand_edited_step_in_one_line(tmp_path):
    ckpt = copy_reference_checkpoint(tmp_path)
    meta_path = ckpt / "iter_0000006" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["step"] = "six"
    meta_path.write_text(json.dumps(meta))
    flags = [*TINY, "--train-iters", "8", *SAME_SCHEDULE, "--load", str(ckpt), "--save", str(ckpt)]
    _, proc = run_pretrain(1, flags, tmp_path, expect_fail=True)
    assert proc.stderr.splitlines()[0] == (
        f"error: {meta_path}: 'step' is \"six\", not a whole number (was it edited?)"
    )
    assert "megatron_anchor/" not in proc.stderr


def test_rng_files_are_read_without_running_what_they_name(tmp_path):
    """A rank's RNG file as a save writes it restores the same random streams through the weights-only
    reader; one naming a callable (a crafted checkpoint) is refused by name and runs nothing."""
    saved = tmp_path / "rank0.pt"
    torch.save(_rng_state(), saved)
    first = (torch.rand(4), np.random.rand(4), random.random())
    _set_rng_state(read_rng_state(str(saved)))
    again = (torch.rand(4), np.random.rand(4), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    marker, crafted = tmp_path / "ran", tmp_path / "rank1.pt"
    torch.save(dict(_rng_state(), python=RunsOnUnpickle(f"touch {marker}")), crafted)
    with pytest.raises(CheckpointError, match=f"^{crafted}: not a readable RNG state .*GLOBAL posix.system"):
        read_rng_state(str(crafted))
    assert not marker.exists()


def test_optimizer_settings_are_read_without_running_what_they_name(tmp_path):
    """DCP keeps the optimizer's param_groups (lr, betas, ...) pickled: a resume restores them as saved, and
    a checkpoint whose settings name a callable (a crafted one) is refused by name and runs nothing."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    from megatron_anchor.training.checkpoint import load_checkpoint
    from megatron_anchor.training.parallel import ParallelDims

    model = torch.nn.Linear(4, 4)
    trained = torch.optim.AdamW(model.parameters(), lr=0.5)
    model(torch.randn(2, 4)).sum().backward()
    trained.step()
    marker, dims = tmp_path / "ran", ParallelDims(1, 1, 1, 0, 0, 0, 0)
    for name, lr in [("saved", 0.25), ("crafted", RunsOnUnpickle(f"touch {tmp_path / 'ran'}"))]:
        state = get_optimizer_state_dict(model, trained)
        state["param_groups"][0]["lr"] = lr
        dcp.save({"tp0": {"optim": state}}, checkpoint_id=tmp_path / name)
        (tmp_path / name / "meta.json").write_text(json.dumps({"step": 1, "world": 1}))
    model.zero_grad(set_to_none=True)  # as at a resume: DCP then sizes the fresh optimizer's state
    resumed = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_checkpoint(str(tmp_path / "saved"), model, resumed, dims, weights_loaded=True, load_rng=False)
    assert resumed.param_groups[0]["lr"] == 0.25 and resumed.param_groups[0]["betas"] == (0.9, 0.999)
    exp_avg = next(iter(resumed.state.values()))["exp_avg"]
    assert torch.equal(exp_avg, next(iter(trained.state.values()))["exp_avg"])
    crafted = tmp_path / "crafted"
    with pytest.raises(CheckpointError, match=f"^reading the optimizer state of checkpoint {crafted} failed"):
        load_checkpoint(str(crafted), model, resumed, dims, weights_loaded=True, load_rng=False)
    assert not marker.exists()


def test_rng_files_written_under_the_other_numpy_major_version_are_read(tmp_path):
    """numpy 1 pickles its arrays' rebuild function as numpy.core.multiarray._reconstruct, numpy 2 as
    numpy._core.multiarray._reconstruct: a run resumed after an upgrade (or a downgrade) reads either."""
    import io
    import zipfile

    saved = io.BytesIO()
    torch.save(_rng_state(), saved)
    first = np.random.rand(4)
    archive = zipfile.ZipFile(io.BytesIO(saved.getvalue()))
    for old, new in [(b"numpy._core.", b"numpy.core."), (b"numpy.core.", b"numpy._core.")]:
        renamed = tmp_path / f"{new.decode()}pt"
        with zipfile.ZipFile(renamed, "w") as out:
            for name in archive.namelist():
                data = archive.read(name)
                out.writestr(name, data.replace(old, new) if name.endswith("data.pkl") else data)
        assert new + b"multiarray" in zipfile.ZipFile(renamed).read("archive/data.pkl")
        _set_rng_state(read_rng_state(str(renamed)))
        assert np.array_equal(np.random.rand(4), first)
