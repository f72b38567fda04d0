"""What the evaluation tools settle before loading a model: the output directory is probed, the tokenizer
and the default lengths come from the checkpoint, and every error of the command line is one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_anchor.checkpoint import checkpoint_meta, tokenizer_identity, write_meta
from megatron_anchor.model import AnchorGPTConfig
from megatron_anchor.model.config_record import config_record
from tests.data.anchor_data_helpers import read_only
from tests.disk_limits import file_size_limit
from tests.training.packed_data import write_hf_tokenizer
from tools import bf16_rope_deviation, eval_passkey

REPO = Path(__file__).resolve().parents[2]
TINY = ["--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--vocab-size", "128"]


def _checkpoint(work: Path, seq_length: int, tokenizer_dir: str | None) -> Path:
    """A checkpoint's meta.json as a run at ``seq_length`` writes it (no weights: nothing here loads them)."""
    cfg = AnchorGPTConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4,
                          vocab_size=128, seq_length=seq_length, num_query_groups=2)  # fmt: skip
    meta = checkpoint_meta(
        step=5, consumed_samples=20,
        record=config_record(cfg, vocab_size=80, make_vocab_size_divisible_by=128),
        tokenizer=tokenizer_identity("HuggingFaceTokenizer", tokenizer_dir, 80) if tokenizer_dir else None,
        schedule={"seq_length": seq_length, "train_iters": 5, "global_batch_size": 4},
        sizes={"tp": 1, "cp": 1, "dp": 1, "world": 1}, weights_only=False,
    )  # fmt: skip
    (work / "ckpt" / "iter_0000005").mkdir(parents=True)
    write_meta(str(work / "ckpt" / "iter_0000005"), meta)
    (work / "ckpt" / "latest").write_text("iter_0000005\n")
    return work / "ckpt"


def _errors(parse, argv: list[str], capsys) -> list[str]:
    with pytest.raises(SystemExit) as stop:
        parse(argv)
    assert stop.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("error: ") for line in lines), lines
    return lines


def test_an_unwritable_out_dir_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    blocker, locked = tmp_path / "a_file", tmp_path / "locked"
    blocker.write_text("x")
    locked.mkdir()
    passkey = [*TINY, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
               write_hf_tokenizer(tmp_path / "tok", vocab=80), "--lengths", "64"]  # fmt: skip
    for tool, flags in ((eval_passkey, passkey), (bf16_rope_deviation, [*TINY, "--seq-length", "64"])):
        lines = _errors(tool.parse_args, [*flags, "--out-dir", str(blocker / "out")], capsys)
        assert lines == [f"error: --out-dir {blocker / 'out'}: {blocker} is a file, not a directory"]
        with read_only(locked):
            lines = _errors(tool.parse_args, [*flags, "--out-dir", str(locked / "out")], capsys)
        assert lines == [f"error: --out-dir {locked / 'out'}: {locked} is not writable"]
        assert os.listdir(locked) == []


def test_the_probe_writes_for_real(tmp_path: Path) -> None:
    """A directory the permissions allow but a write fails in (here the file-size limit, as a full disk or
    a quota): the probe names the errno and the free space."""
    code = f"from megatron_anchor._files import output_problem as p; print(p('--out-dir', {str(tmp_path)!r}))"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                          preexec_fn=file_size_limit(0))  # fmt: skip
    want = f"--out-dir {tmp_path}: {tmp_path} is not writable: [Errno 27 EFBIG] File too large"
    assert proc.stdout.startswith(want) and "free on" in proc.stdout and os.listdir(tmp_path) == []


def test_errors_of_one_command_line_come_together(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    flags = [*TINY, "--depths", "0,2", "--num-trials", "0", "--lengths", "64"]
    lines = _errors(eval_passkey.parse_args, [*flags, "--out-dir", str(blocker / "o")], capsys)
    assert [line.split(":")[1].strip() for line in lines] == [
        "--depths [0.0, 2.0]", "--num-trials, --micro-batch-size and --passkey-digits must be >= 1",
        f"--out-dir {blocker / 'o'}", "give --tokenizer-type/--tokenizer-model",
    ]  # fmt: skip


def test_a_tokenizer_that_does_not_load_is_one_line(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    flags = [*TINY, "--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", str(empty)]
    lines = _errors(eval_passkey.parse_args, [*flags, "--lengths", "64", "--out-dir", str(tmp_path)], capsys)
    assert len(lines) == 1 and f"--tokenizer-model {empty}: no Hugging Face tokenizer files" in lines[0]


def test_passkey_takes_the_tokenizer_the_checkpoint_records(tmp_path: Path, capsys) -> None:
    tokenizer_dir = write_hf_tokenizer(tmp_path / "tok", vocab=80)
    ckpt = _checkpoint(tmp_path, 256, tokenizer_dir)
    args = eval_passkey.parse_args(["--load", str(ckpt), "--lengths", "64", "--out-dir", str(tmp_path / "o")])
    assert (args.tokenizer_type, args.tokenizer_model) == ("HuggingFaceTokenizer", tokenizer_dir)
    assert f"tokenizer from checkpoint {ckpt / 'iter_0000005'}" in args.checkpoint_notes[0]
    write_hf_tokenizer(tmp_path / "tok", vocab=70)  # the files change after the run
    lines = _errors(eval_passkey.parse_args, ["--load", str(ckpt), "--lengths", "64"], capsys)
    assert len(lines) == 1 and f"its tokenizer files at {tokenizer_dir} have changed since" in lines[0]


def test_deviation_lengths_follow_the_trained_length(tmp_path: Path, capsys) -> None:
    args = bf16_rope_deviation.parse_args([*TINY, "--seq-length", "128", "--out-dir", str(tmp_path / "a")])
    assert (args.lengths, args.sweep_length, args.seq_length) == ([64, 128], 128, 128)
    ckpt = _checkpoint(tmp_path, 256, None)
    args = bf16_rope_deviation.parse_args(["--load", str(ckpt), "--out-dir", str(tmp_path / "b")])
    assert (args.lengths, args.sweep_length, args.seq_length) == ([64, 128, 256], 256, 256)
    note = "growth over T = 64..256 (the checkpoint's trained length; --lengths to change)"
    assert args.length_note == note
    flags = ["--load", str(ckpt), "--lengths", "64,512", "--out-dir", str(tmp_path)]
    args = bf16_rope_deviation.parse_args(flags)
    assert (args.lengths, args.sweep_length, args.seq_length) == ([64, 512], 256, 512)
