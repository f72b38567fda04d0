"""The import tool prints complete trainer flags: with the tokenizer's, they pass the trainer's dry run."""

from __future__ import annotations

import shlex
from pathlib import Path

from megatron_anchor.pretrain import main as pretrain
from tests.convert.convert_harness import save_tiny_hf
from tests.training.packed_data import write_hf_tokenizer
from tools.convert_hf_checkpoint import main as convert


def _printed_flags(out: str) -> list[str]:
    block = out.split("trainer flags for this checkpoint:", 1)[1].split("\nnote:", 1)[0]
    return shlex.split(block.replace("\\\n", " "))


def test_printed_flags_name_the_tokenizer_and_pass_the_dry_run(tmp_path: Path, capsys, monkeypatch) -> None:
    hf_dir = save_tiny_hf("llama", tmp_path / "hf")
    write_hf_tokenizer(hf_dir, vocab=100)  # replaces the stand-in tokenizer files with a loadable one
    assert convert(["import", "--hf-dir", str(hf_dir), "--save", str(tmp_path / "ckpt"), "--quiet"]) == 0
    flags = _printed_flags(capsys.readouterr().out)
    assert flags[flags.index("--tokenizer-type") + 1] == "HuggingFaceTokenizer"
    assert flags[flags.index("--tokenizer-model") + 1] == str(hf_dir)
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert pretrain([*flags, "--seq-length", "64", "--train-iters", "1", "--mock-data", "--dry-run"]) == []
    out = capsys.readouterr().out
    assert f"ok: tokenizer HuggingFaceTokenizer {hf_dir}: 100 ids" in out and "error:" not in out


def test_a_directory_without_tokenizer_files_gets_a_note(tmp_path: Path, capsys) -> None:
    hf_dir = save_tiny_hf("mistral", tmp_path / "hf")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (hf_dir / name).unlink()
    assert convert(["import", "--hf-dir", str(hf_dir), "--save", str(tmp_path / "ckpt"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "--tokenizer-model" not in _printed_flags(out) and "--load" in _printed_flags(out)
    assert f"note: {hf_dir} has no tokenizer files: add --tokenizer-type/--tokenizer-model" in out
