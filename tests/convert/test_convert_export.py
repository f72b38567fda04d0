"""Export of checkpoints written without a source model (as a run from scratch writes them): the stored dtype,
the trained length and the recorded tokenizer carry over; a damaged safetensors file is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from megatron_anchor.checkpoint import tokenizer_identity
from megatron_anchor.convert.hf_io import INDEX_NAME
from tests.convert.convert_harness import save_tiny_hf
from tests.disk_limits import file_size_limit
from tests.training.megatron_recipes import gpt2_bpe_files
from tests.training.packed_data import write_hf_tokenizer
from tools.convert_hf_checkpoint import main

REPO = Path(__file__).resolve().parents[2]

SCHEDULE = {"train_iters": 10, "global_batch_size": 4, "seq_length": 1024}  # what the trainer records


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """The tiny fp32 Llama saved by transformers."""
    return save_tiny_hf("llama", tmp_path_factory.mktemp("export") / "hf")


def _from_scratch(hf_dir: Path, work: Path, tokenizer: dict | None) -> Path:
    """A converted checkpoint whose meta.json is made what a run from scratch records: no source config,
    no copy of the source files, the run's schedule and tokenizer."""
    ckpt = work / "ckpt"
    assert main(["import", "--hf-dir", str(hf_dir), "--save", str(ckpt), "--quiet"]) == 0
    iter_dir = ckpt / "iter_0000000"
    meta = json.loads((iter_dir / "meta.json").read_text())
    for name in list(meta["files"]):
        if name.startswith("hf/"):
            (iter_dir / name).unlink()
            del meta["files"][name]
    (iter_dir / "hf").rmdir()
    for key in ("hf_config", "converted_from", "dtype"):
        meta.pop(key)
    meta["model"].pop("max_position_embeddings")
    meta.update(schedule=SCHEDULE, tokenizer=tokenizer, weights_only=False)
    (iter_dir / "meta.json").write_text(json.dumps(meta))
    return ckpt


def test_export_without_a_source_keeps_dtype_trained_length_and_tokenizer(hf_dir, tmp_path, capsys) -> None:
    tokenizer_dir = write_hf_tokenizer(tmp_path / "tokenizer", vocab=80)
    ckpt = _from_scratch(hf_dir, tmp_path, tokenizer_identity("HuggingFaceTokenizer", tokenizer_dir, 100))
    out = tmp_path / "out"
    assert main(["export", "--load", str(ckpt), "--hf-dir", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    with safe_open(out / "model.safetensors", framework="pt") as f:
        dtypes = {f.get_slice(name).get_dtype() for name in f.keys()}
    config = json.loads((out / "config.json").read_text())
    assert dtypes == {"F32"} and config["dtype"] == "float32" and "exported 15 float32 tensors" in printed
    assert config["max_position_embeddings"] == 1024  # the trained length, not a fallback
    from transformers import AutoTokenizer

    text = "w5 w17 w79 w3"
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == AutoTokenizer.from_pretrained(
        tokenizer_dir
    )(text)["input_ids"]
    assert f"tokenizer files tokenizer.json, tokenizer_config.json from {tokenizer_dir}" in printed
    half = tmp_path / "half"
    assert main(["export", "--load", str(ckpt), "--hf-dir", str(half), "--dtype", "bfloat16", "--quiet"]) == 0
    with safe_open(half / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("lm_head.weight").dtype == torch.bfloat16


def test_export_of_a_gpt2_bpe_run_writes_its_vocab_and_merges(hf_dir, tmp_path, capsys) -> None:
    from transformers import AutoTokenizer

    from megatron_anchor.data import build_tokenizer

    vocab, merges = gpt2_bpe_files(tmp_path / "gpt2", size=100)
    ckpt = _from_scratch(hf_dir, tmp_path, tokenizer_identity("GPT2BPETokenizer", vocab, 100, merges))
    out = tmp_path / "out"
    assert main(["export", "--load", str(ckpt), "--hf-dir", str(out), "--quiet"]) == 0
    assert (out / "vocab.json").read_bytes() == Path(vocab).read_bytes()
    assert (out / "merges.txt").read_bytes() == Path(merges).read_bytes()
    assert not (out / "tokenizer.model").exists()
    text = "ab c<|endoftext|>"
    assert AutoTokenizer.from_pretrained(out)(text)["input_ids"] == build_tokenizer(
        "GPT2BPETokenizer", vocab, merges
    ).encode(text)


def test_export_names_a_tokenizer_that_changed_and_writes_none(hf_dir, tmp_path, capsys) -> None:
    tokenizer_dir = write_hf_tokenizer(tmp_path / "tokenizer", vocab=80)
    ckpt = _from_scratch(hf_dir, tmp_path, tokenizer_identity("HuggingFaceTokenizer", tokenizer_dir, 80))
    write_hf_tokenizer(tmp_path / "tokenizer", vocab=60)  # replaced after the run
    assert main(["export", "--load", str(ckpt), "--hf-dir", str(tmp_path / "out"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert f"its tokenizer files at {tokenizer_dir} have changed since" in printed
    assert "no tokenizer files written" in printed and not (tmp_path / "out" / "tokenizer.json").exists()


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_safetensors_is_one_line_naming_the_file(hf_dir, tmp_path, capsys, keep: float) -> None:
    broken = tmp_path / "hf"
    broken.mkdir()
    for f in hf_dir.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: int(len(data) * keep)] if f.suffix == ".safetensors" else data)
    assert main(["import", "--hf-dir", str(broken), "--save", str(tmp_path / "ckpt"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert f"{broken / 'model.safetensors'} is not a complete safetensors file" in err
    assert not (tmp_path / "ckpt").exists()


def test_export_over_an_earlier_sharded_export_leaves_no_stale_shards(hf_dir, tmp_path, capsys) -> None:
    """As transformers' save_pretrained: the weight files of an earlier save that this one did not write are
    removed (a loader that follows model.safetensors.index.json would read the old shards), with a note."""
    ckpt = tmp_path / "ckpt"
    assert main(["import", "--hf-dir", str(hf_dir), "--save", str(ckpt), "--quiet"]) == 0
    out = tmp_path / "out"
    export = ["export", "--load", str(ckpt), "--hf-dir", str(out), "--quiet"]
    assert main([*export, "--max-shard-size-gb", "0.00002"]) == 0
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / INDEX_NAME).exists()
    (out / "notes.txt").write_text("not a weight file")
    capsys.readouterr()
    assert main(export) == 0
    assert sorted(p.name for p in out.glob("model*")) == ["model.safetensors"]
    assert (out / "notes.txt").exists()
    stale = ", ".join([*shards, INDEX_NAME])
    assert f"note: removed the weight files of an earlier save in {out}: {stale}" in capsys.readouterr().out


def test_export_onto_a_full_disk_is_one_line(hf_dir, tmp_path) -> None:
    """A shard that does not fit (a file size limit, as a full disk or a quota): one line naming the file
    and the free space, exit 1 (safetensors' own error was a traceback)."""
    ckpt = tmp_path / "ckpt"
    assert main(["import", "--hf-dir", str(hf_dir), "--save", str(ckpt), "--quiet"]) == 0
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "tools" / "convert_hf_checkpoint.py"), "export", "--load", str(ckpt),
           "--hf-dir", str(out), "--quiet"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=file_size_limit(8192))  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: writing {out / 'shard-00000.tmp'} failed: "), proc.stderr
    assert proc.stderr.strip().endswith(f" free on {out})") and proc.stderr.count("\n") == 1, proc.stderr
    assert not list(out.glob("model*"))
