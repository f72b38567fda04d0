"""Start-up checks of --load/--save against the checkpoint's metadata (what --dry-run also runs): model flags
taken from the checkpoint or refused by name, no silent fresh start, no silent schedule change, --save
writable. All of them read files only, so they run here without a process group."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from train_harness import TINY, copy_reference_checkpoint, reference_run

from megatron_anchor.checkpoint.layout import (
    CheckpointError,
    commit_checkpoint,
    read_meta,
    why_not_a_checkpoint,
)
from megatron_anchor.training import build_parser, validate_args

# TINY without its model flags: the checkpoint supplies them.
RUN = TINY[TINY.index("--seq-length") :]


def _validate(flags: list[str], world_size: int = 1):
    return validate_args(build_parser().parse_args(flags), world_size)


def test_model_flags_left_out_are_the_checkpoints_and_a_contradiction_names_both_values():
    ckpt, _, _, _ = reference_run()
    meta = json.loads((ckpt / "iter_0000006" / "meta.json").read_text())
    assert meta["model"]["num_layers"] == 2 and meta["rope"]["rotary_base"] == 10000.0
    assert meta["schedule"]["train_iters"] == 6 and meta["tokenizer"]["vocab_size"] == 256
    args = _validate([*RUN, "--train-iters", "8", "--lr-decay-iters", "6", "--load", str(ckpt)])
    got = (args.num_layers, args.hidden_size, args.ffn_hidden_size, args.num_attention_heads)
    assert got == (2, 64, 128, 4) and args.num_query_groups == 2 and args.vocab_size == 256
    assert args.load_checkpoint == str(ckpt / "iter_0000006")
    assert any("--num-layers 2" in note for note in args.checkpoint_notes)
    with pytest.raises(
        ValueError, match=r"--num-layers 1 contradicts checkpoint .*iter_0000003, which has num_layers 2"
    ):
        _validate([*TINY, "--num-layers", "1", "--train-iters", "8", "--load", str(ckpt / "iter_0000003")])
    with pytest.raises(
        ValueError, match=r"--vocab-size 300 gives a padded vocabulary of 384 .* has 256 rows"
    ):
        _validate([*TINY, "--vocab-size", "300", "--train-iters", "8", "--load", str(ckpt / "iter_0000003")])
    with pytest.raises(ValueError, match="--num-layers is required"):
        _validate(RUN)


def test_load_without_a_checkpoint_is_an_error_except_the_auto_resume_pattern(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    for load, message in [
        (tmp_path / "typo", "does not exist"),
        (hf, "is a Hugging Face model directory, not a checkpoint: convert it first"),
        (tmp_path, r"holds neither meta.json nor a 'latest' \(or latest_checkpointed_iteration.txt\) file"),
    ]:
        with pytest.raises(ValueError, match=f"--load {load} {message}"):
            _validate([*TINY, "--load", str(load)])
    same = str(tmp_path / "run")
    args = _validate([*TINY, "--load", same, "--save", same])
    assert args.load_checkpoint is None and "starting from scratch" in args.checkpoint_notes[0]


def test_resume_needs_steps_left_and_the_same_schedule():
    ckpt, _, _, _ = reference_run()
    for iters in ("6", "4"):
        with pytest.raises(
            ValueError, match=f"is at step 6, at or past --train-iters {iters}: nothing to train"
        ):
            _validate([*TINY, "--train-iters", iters, "--load", str(ckpt)])
    # A longer run re-derives --lr-decay-iters from --train-iters: a silent schedule change, refused.
    with pytest.raises(
        ValueError, match=r"--lr-decay-iters 10 \(checkpoint: 6\).*--override-opt-param-scheduler"
    ):
        _validate([*TINY, "--train-iters", "10", "--load", str(ckpt)])
    with pytest.raises(ValueError, match=r"--lr 0.001 \(checkpoint: 0.002\)"):
        _validate(
            [*TINY, "--train-iters", "10", "--lr-decay-iters", "6", "--lr", "1e-3", "--load", str(ckpt)]
        )
    with pytest.raises(ValueError, match="--global-batch-size 8 differs from checkpoint"):
        _validate(
            [
                *TINY,
                "--train-iters",
                "10",
                "--lr-decay-iters",
                "6",
                "--global-batch-size",
                "8",
                "--load",
                str(ckpt),
            ]
        )
    kept = _validate([*TINY, "--train-iters", "10", "--lr-decay-iters", "6", "--load", str(ckpt)])
    assert kept.checkpoint_notes and not any("schedule" in n for n in kept.checkpoint_notes)
    new = _validate([*TINY, "--train-iters", "10", "--override-opt-param-scheduler", "--load", str(ckpt)])
    assert any("new schedule --lr-decay-iters 10 (checkpoint: 6)" in n for n in new.checkpoint_notes)
    fresh = _validate([*TINY, "--train-iters", "3", "--finetune", "--load", str(ckpt)])  # a new schedule
    assert fresh.load_checkpoint.endswith("iter_0000006")
    with pytest.raises(ValueError, match="was saved at --tensor-model-parallel-size 1; this run uses 2"):
        _validate([*TINY, "--train-iters", "10", "--tensor-model-parallel-size", "2", "--load", str(ckpt)], 2)


def test_save_is_checked_at_start_up_and_nothing_is_created(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(ValueError, match=r"--save .*file/ckpt: .*file is a file, not a directory"):
        _validate([*TINY, "--save", str(blocker / "ckpt")])
    args = _validate([*TINY, "--save", str(tmp_path / "new" / "ckpt")])
    assert not (tmp_path / "new").exists()  # created by the first save, not by the flag checks (or --dry-run)
    assert args.checkpoint_notes == []
    existing = tmp_path / "existing"
    existing.mkdir()
    probes = []
    monkeypatch.setattr("megatron_anchor._files.write_probe", lambda *a: probes.append(a))
    _validate([*TINY, "--save", str(existing)])
    _validate([*TINY, "--save", str(existing / "not" / "yet")])  # its nearest existing parent is probed
    monkeypatch.setenv("LOCAL_RANK", "3")
    _validate([*TINY, "--save", str(existing)])
    assert probes == [(str(existing),)] * 2  # one write probe per node, nothing created


def test_a_checkpoint_whose_latest_names_a_missing_directory_is_refused(tmp_path):
    copy = copy_reference_checkpoint(tmp_path)
    shutil.rmtree(copy / "iter_0000006")
    with pytest.raises(ValueError, match="latest names .*iter_0000006, which is not a complete checkpoint"):
        _validate([*TINY, "--train-iters", "10", "--lr-decay-iters", "6", "--load", str(copy)])


def test_switches_are_reported_as_the_command_line_says_them():
    """A recorded untied model with no qkv bias: notes and errors name switches by presence, never as
    '--disable-bias-linear False' (which would mean the opposite)."""
    import argparse

    from megatron_anchor.training.model_args import apply_checkpoint_model

    meta = {"model": {"num_layers": 2, "untie_embeddings_and_output_weights": True, "add_qkv_bias": True}}
    omitted = argparse.Namespace(
        num_layers=None, untie_embeddings_and_output_weights=None, add_qkv_bias=None, tokenizer_model=None,
        vocab_size=1,
    )  # fmt: skip
    (note,) = apply_checkpoint_model(omitted, meta, "ckpt")
    # The architecture a checkpoint without those fields was built with (RMSNorm, SwiGLU, no biases) too.
    assert note == (
        "from checkpoint ckpt: --num-layers 2 --add-qkv-bias --untie-embeddings-and-output-weights "
        "--normalization RMSNorm --swiglu --disable-bias-linear --hidden-dropout 0.0"
    )
    assert omitted.untie_embeddings_and_output_weights is True and omitted.add_qkv_bias is True
    tied = argparse.Namespace(**{**vars(omitted), "untie_embeddings_and_output_weights": False})
    with pytest.raises(ValueError) as err:
        apply_checkpoint_model(tied, meta, "ckpt")
    assert str(err.value).startswith(
        "no --untie-embeddings-and-output-weights contradicts checkpoint ckpt, which has "
        "--untie-embeddings-and-output-weights"
    )


def test_resume_checks_read_meta_json_once_and_again_only_when_it_changes(tmp_path, monkeypatch):
    copy = copy_reference_checkpoint(tmp_path)
    meta_file = copy / "iter_0000006" / "meta.json"
    opened = []
    real_open = open

    def counting_open(file, *args, **kwargs):
        if str(file).endswith("meta.json"):
            opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    flags = [*TINY, "--train-iters", "10", "--lr-decay-iters", "6", "--load", str(copy)]
    _validate(flags)
    _validate(flags)
    assert opened == [str(meta_file)]  # model flags, vocabulary and resume checks share one read
    meta = read_meta(str(meta_file.parent))
    meta["step"] = -1  # callers get their own dict
    assert read_meta(str(meta_file.parent))["step"] == 6
    text = meta_file.read_text()
    meta_file.write_text(text.replace('"step": 6', '"step": 7 '))  # a new version (other size)
    assert read_meta(str(meta_file.parent))["step"] == 7 and len(opened) == 2
    # A same-size copy put in place with the old mtime (cp -p, rsync -t): a new inode, so read again.
    other = meta_file.with_name("other.json")
    other.write_text(text.replace('"step": 6', '"step": 8 '))
    stat = meta_file.stat()
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, meta_file)
    assert read_meta(str(meta_file.parent))["step"] == 8


def test_a_directory_without_latest_suggests_its_newest_checkpoint_by_step(tmp_path):
    for name in ("iter_9999999", "iter_10000000", "iter_0000005"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text("{}")
    (tmp_path / "iter_20000000").mkdir()  # incomplete: no meta.json
    assert why_not_a_checkpoint(str(tmp_path)).endswith(f"e.g. {tmp_path / 'iter_10000000'}")


def test_a_directory_of_checkpoints_without_latest_resumes_its_newest_and_no_iter_is_overwritten(tmp_path):
    copy = copy_reference_checkpoint(tmp_path)
    for pointer in ("latest", "latest_checkpointed_iteration.txt"):
        (copy / pointer).unlink(missing_ok=True)
    resume = [*TINY, "--train-iters", "8", "--lr-decay-iters", "6"]
    args = _validate([*resume, "--load", str(copy), "--save", str(copy)])
    newest = copy / "iter_0000006"
    assert args.load_checkpoint == str(newest)  # not "no checkpoint yet: starting from scratch"
    assert f"--load {copy} names no checkpoint ('latest' is missing): taking its newest, {newest}" in (
        args.checkpoint_notes
    )
    # A run that would not continue from the newest checkpoint of --save would write over it: refused.
    with pytest.raises(ValueError, match=r"already holds checkpoints \(newest iter_0000006\) and this run "
                       r"would start at step 0 over them: resume with --load"):  # fmt: skip
        _validate([*TINY, "--save", str(copy)])
    with pytest.raises(ValueError, match=r"but this run starts at step 3 from .*iter_0000003 and would over"):
        _validate([*resume, "--load", str(copy / "iter_0000003"), "--save", str(copy)])
    with pytest.raises(ValueError, match=r"step 0 from its newest checkpoint iter_0000006 \(weights only"):
        _validate([*resume, "--finetune", "--load", str(copy), "--save", str(copy)])
    # The last guard: a commit never replaces an existing iter_*.
    before = (newest / "meta.json").read_text()
    (tmp_path / "iter_0000006.tmp").mkdir()
    with pytest.raises(CheckpointError, match="iter_0000006 already exists: a checkpoint is never overwri"):
        commit_checkpoint(str(tmp_path / "iter_0000006.tmp"), str(newest))
    assert (newest / "meta.json").read_text() == before


def test_a_save_stopped_before_its_pointers_were_written_is_resumed_by_the_same_command_line(
    tmp_path, monkeypatch
):
    copy = copy_reference_checkpoint(tmp_path)
    for pointer, text in (("latest", "iter_0000003\n"), ("latest_checkpointed_iteration.txt", "3")):
        (copy / pointer).write_text(text)  # as before step 6's save
    newest = copy / "iter_0000006"
    newest.rename(copy / "iter_0000006.tmp")

    def crash(*_):
        raise OSError("killed")

    with monkeypatch.context() as patch:  # the save of step 6 stops after its rename
        patch.setattr(os, "replace", crash)
        with pytest.raises(OSError):
            commit_checkpoint(str(copy / "iter_0000006.tmp"), str(newest))
    assert (copy / "latest").read_text() == "iter_0000003\n" and newest.is_dir()
    resume = [*TINY, "--train-iters", "8", "--lr-decay-iters", "6", "--load", str(copy), "--save", str(copy)]
    args = _validate(resume)
    assert args.load_checkpoint == str(newest)
    assert f"{copy / 'latest'} names iter_0000003, but the newer {newest} is complete (its save stopped " \
        f"before the pointers were written): taking {newest}" in args.checkpoint_notes


def test_pointers_rolled_back_by_hand_are_followed_and_newer_checkpoints_never_overwritten(tmp_path):
    copy = copy_reference_checkpoint(tmp_path)  # saved whole: its pointers name iter_0000006
    assert not (copy / "commit.pending").exists()
    for pointer, text in (("latest", "iter_0000003\n"), ("latest_checkpointed_iteration.txt", "3")):
        (copy / pointer).write_text(text)
    flags = [*TINY, "--train-iters", "8", "--lr-decay-iters", "6", "--load", str(copy)]
    assert _validate(flags).load_checkpoint == str(copy / "iter_0000003")
    with pytest.raises(ValueError, match=r"already holds checkpoints \(newest iter_0000006\), but this run "
                       r"starts at step 3"):  # fmt: skip
        _validate([*flags, "--save", str(copy)])


def test_pointer_files_latest_and_megatrons_tracker_are_read_and_damage_is_named(tmp_path):
    copy = copy_reference_checkpoint(tmp_path)
    resume = [*TINY, "--train-iters", "8", "--lr-decay-iters", "6", "--load", str(copy)]
    (copy / "latest").unlink()
    shutil.rmtree(copy / "iter_0000006")  # the tracker names the newest complete checkpoint
    (copy / "latest_checkpointed_iteration.txt").write_text("3")  # Megatron-LM's format
    assert _validate(resume).load_checkpoint == str(copy / "iter_0000003")
    (copy / "latest_checkpointed_iteration.txt").write_text("iter_3\n")
    with pytest.raises(ValueError) as err:
        _validate(resume)
    tracker = copy / "latest_checkpointed_iteration.txt"
    assert str(err.value) == f"--load: {tracker} holds 'iter_3', not a checkpoint name such as iter_0000010"
    tracker.unlink()
    (copy / "latest").write_bytes(bytes([0xB4, 0x9F, 0x00, 0xFF]) * 8)  # random bytes
    with pytest.raises(ValueError) as err:
        _validate(resume)
    assert str(err.value) == (
        f"--load: {copy / 'latest'} is damaged (it holds binary data, not a checkpoint name such as "
        f"iter_0000010): give --load one of the directory's iter_* checkpoints"
    )


def test_pretrained_checkpoint_starts_a_run_whose_restarts_resume_it_and_a_mix_is_refused(tmp_path):
    ckpt, _, _, _ = reference_run()
    converted = tmp_path / "converted" / "iter_0000000"  # weights only, as a converted checkpoint
    shutil.copytree(ckpt / "iter_0000003", converted)
    meta = json.loads((converted / "meta.json").read_text())
    (converted / "meta.json").write_text(json.dumps({**meta, "step": 0, "weights_only": True}))
    run = tmp_path / "run"
    flags = [*TINY, "--train-iters", "5", "--lr-decay-iters", "6", "--save", str(run)]
    line = [*flags, "--pretrained-checkpoint", str(converted), "--load", str(run)]
    first = _validate(line)
    assert first.load_checkpoint == str(converted) and first.finetune
    assert f"--load {run} holds no checkpoint yet: starting from the weights of --pretrained-checkpoint " \
           f"{converted} at step 0" in first.checkpoint_notes  # fmt: skip
    shutil.copytree(ckpt / "iter_0000003", run / "iter_0000003")  # the run has saved a checkpoint
    (run / "latest").write_text("iter_0000003\n")
    again = _validate(line)  # the same command line after a restart resumes the run
    assert again.load_checkpoint == str(run / "iter_0000003") and not again.finetune
    resuming = f"--load {run} holds a checkpoint: resuming it (--pretrained-checkpoint not used)"
    assert resuming in again.checkpoint_notes
    with pytest.raises(ValueError) as err:  # --load CONVERTED --save RUN: step 0 again, into RUN's saves
        _validate([*flags, "--load", str(converted)])
    assert str(err.value) == (
        f"--save {run} already holds checkpoints (newest iter_0000003), but this run starts at step 0 from "
        f"{converted} and would overwrite or mix with them: to continue them, --load {run}; to start from "
        f"{converted} only while --save holds none, --load {run} --pretrained-checkpoint {converted}; or "
        f"choose another --save"
    )


def test_a_resume_that_turns_decoupled_lr_on_needs_a_new_optimizer():
    """--decoupled-lr adds optimizer groups of the embedding and output layer: the checkpoint's Adam state,
    trained without them, cannot be mapped onto them."""
    ckpt, _, _, _ = reference_run()
    resume = [*TINY, "--load", str(ckpt / "iter_0000003"), "--decoupled-lr", "1e-3"]
    with pytest.raises(ValueError, match=r"--decoupled-lr 0.001: checkpoint .*_0000003 was trained without"):
        _validate(resume)
    with pytest.raises(ValueError, match=r"LR schedule differs .*--decoupled-lr 0.001 \(checkpoint: None\)"):
        _validate([*resume, "--no-load-optim"])
    args = _validate([*resume, "--no-load-optim", "--override-opt-param-scheduler"])
    assert any("--decoupled-lr 0.001 (checkpoint: None)" in note for note in args.checkpoint_notes)


def test_a_resume_without_tokenizer_flags_keeps_the_checkpoints_tokenizer(tmp_path):
    """The checkpoint records its tokenizer: a resume that names none takes it (as the evaluation tools do),
    with a note, so its data is checked against it and its own checkpoints record it (they recorded none)."""
    from packed_data import write_hf_tokenizer

    from megatron_anchor.checkpoint import tokenizer_identity

    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference_run()[0], ckpt)
    tokenizer = write_hf_tokenizer(tmp_path / "tok", vocab=256)
    meta_path = ckpt / "iter_0000006" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"] = tokenizer_identity("HuggingFaceTokenizer", tokenizer, 256)
    meta_path.write_text(json.dumps(meta))
    flags = [f for f in RUN if f not in ("--vocab-size", "256")]
    args = _validate([*flags, "--train-iters", "8", "--lr-decay-iters", "6", "--load", str(ckpt)])
    assert (args.tokenizer_type, args.tokenizer_model) == ("HuggingFaceTokenizer", tokenizer)
    assert f"tokenizer from checkpoint {ckpt / 'iter_0000006'}: --tokenizer-type HuggingFaceTokenizer " \
        f"--tokenizer-model {tokenizer}" in args.checkpoint_notes


def test_a_pointer_path_that_is_not_a_file_is_refused_before_training(tmp_path):
    """A directory named ``latest`` in --save: the run used to train until its first save failed on
    ``latest.tmp``; the flag checks now name it."""
    for name in ("latest", "latest_checkpointed_iteration.txt", "commit.pending"):
        save = tmp_path / name.replace(".", "_")
        (save / name).mkdir(parents=True)
        with pytest.raises(ValueError) as err:
            _validate([*TINY, "--save", str(save)])
        assert str(err.value) == (
            f"--save {save}: {save / name} is not a file: every save writes it, so remove or rename it first"
        )
