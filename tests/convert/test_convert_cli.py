"""tools/convert_hf_checkpoint.py: sharded input, RoPE overrides, printed trainer flags, clear errors."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from megatron_anchor.checkpoint import CheckpointReader
from megatron_anchor.convert import export_hf_checkpoint
from megatron_anchor.convert.hf_io import INDEX_NAME, SafetensorsReader
from megatron_anchor.training import build_parser, validate_args
from tests.convert.convert_harness import save_tiny_hf
from tests.disk_limits import file_size_limit
from tools.convert_hf_checkpoint import main

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sharded_llama(tmp_path_factory) -> Path:
    """The tiny Llama saved by transformers in several safetensors shards with an index."""
    hf_dir = save_tiny_hf("llama", tmp_path_factory.mktemp("sharded") / "hf", max_shard_size="40KB")
    assert (hf_dir / INDEX_NAME).is_file() and len(list(hf_dir.glob("*.safetensors"))) > 2
    return hf_dir


def _flags_from_output(out: str) -> list[str]:
    block = out.split("trainer flags for this checkpoint:", 1)[1]
    return shlex.split(block.replace("\\\n", " "))


def test_import_sharded_reads_each_tensor_once_and_prints_valid_flags(
    sharded_llama: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    reads: list[str] = []
    original_get = SafetensorsReader.get
    counting = lambda self, name: reads.append(name) or original_get(self, name)
    monkeypatch.setattr(SafetensorsReader, "get", counting)
    save = tmp_path / "ckpt"
    code = main(
        [
            "import",
            "--hf-dir",
            str(sharded_llama),
            "--save",
            str(save),
            "--tensor-model-parallel-size",
            "2",
            "--rotary-base",
            "5e6",
            "--rope-scaling",
            "none",
            "--dtype",
            "bfloat16",
            "--quiet",
        ]
    )
    assert code == 0
    index = json.loads((sharded_llama / INDEX_NAME).read_text())["weight_map"]
    assert sorted(reads) == sorted(index)  # streamed: every HF tensor read exactly once, even at TP 2
    meta = CheckpointReader(str(save)).meta
    rope = {"rotary_base": 5e6, "rotary_percent": 1.0, "rotary_interleaved": False, "rope_scaling": None}
    assert meta["rope"] == rope
    assert (save / "latest").read_text().strip() == "iter_0000000"
    assert CheckpointReader(str(save)).shards("decoder.final_layernorm.weight")[0].dtype == torch.bfloat16
    flags = _flags_from_output(capsys.readouterr().out)
    args = validate_args(
        build_parser().parse_args([*flags, "--seq-length", "64", "--train-iters", "1", "--mock-data"]),
        world_size=4,
    )
    assert (args.num_layers, args.hidden_size, args.ffn_hidden_size) == (2, 64, 96)
    assert (args.num_attention_heads, args.num_query_groups, args.vocab_size) == (4, 2, 100)
    assert (args.rotary_base, args.norm_epsilon, args.tensor_model_parallel_size) == (5e6, 1e-5, 2)
    assert args.rope_scaling is None and args.load == str(save)


def test_rope_scaling_override_reaches_meta_and_flags(sharded_llama: Path, tmp_path: Path, capsys) -> None:
    yarn = '{"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 64}'
    assert (
        main(
            [
                "import",
                "--hf-dir",
                str(sharded_llama),
                "--save",
                str(tmp_path / "c"),
                "--rope-scaling",
                yarn,
                "--quiet",
            ]
        )
        == 0
    )
    meta = CheckpointReader(str(tmp_path / "c")).meta
    assert meta["rope"]["rotary_base"] == 500000.0  # kept from the source config
    assert meta["rope"]["rope_scaling"]["rope_type"] == "yarn"
    flags = _flags_from_output(capsys.readouterr().out)
    scaling = json.loads(flags[flags.index("--rope-scaling") + 1])
    assert scaling == {"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 64}


def test_missing_tensor_names_tensor_and_file(sharded_llama: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in sharded_llama.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    name = "model.layers.1.mlp.up_proj.weight"
    shard = json.loads((broken / INDEX_NAME).read_text())["weight_map"][name]
    tensors = load_file(broken / shard)
    del tensors[name]
    save_file(tensors, broken / shard, metadata={"format": "pt"})
    assert main(["import", "--hf-dir", str(broken), "--save", str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert name in err and shard in err
    assert not (tmp_path / "out" / "latest").exists()  # nothing written before the check


def test_unknown_architecture_and_unsupported_settings(sharded_llama: Path, tmp_path: Path, capsys) -> None:
    config = json.loads((sharded_llama / "config.json").read_text())
    for change, message in (
        ({"architectures": ["GPT2LMHeadModel"]}, "unsupported architecture"),
        ({"mlp_bias": True}, "mlp_bias"),
    ):
        hf = tmp_path / message.replace(" ", "_")
        hf.mkdir()
        (hf / "config.json").write_text(json.dumps({**config, **change}))
        assert main(["import", "--hf-dir", str(hf), "--save", str(tmp_path / "x"), "--quiet"]) == 1
        assert message in capsys.readouterr().err


def test_sliding_window_is_reported_as_dropped(sharded_llama: Path, tmp_path: Path) -> None:
    hf = tmp_path / "mistral"
    hf.mkdir()
    for f in sharded_llama.iterdir():
        (hf / f.name).write_bytes(f.read_bytes())
    config = json.loads((hf / "config.json").read_text())
    config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=16)
    (hf / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="sliding_window 16 is dropped"):
        assert main(["import", "--hf-dir", str(hf), "--save", str(tmp_path / "c"), "--quiet"]) == 0


def test_export_of_trained_checkpoint_needs_its_rope(sharded_llama: Path, tmp_path: Path, capsys) -> None:
    converted = tmp_path / "converted"
    assert main(["import", "--hf-dir", str(sharded_llama), "--save", str(converted), "--quiet"]) == 0
    # A trainer-written checkpoint: same tensors, a meta without the model/RoPE sections.
    trained = tmp_path / "trained" / "iter_0000010"
    trained.parent.mkdir()
    (converted / "iter_0000000").rename(trained)
    meta = json.loads((trained / "meta.json").read_text())
    kept = {k: meta[k] for k in ("step", "tp", "cp", "dp", "world", "files")}
    # the trainer records its length with its schedule
    (trained / "meta.json").write_text(json.dumps(kept | {"step": 10, "schedule": {"seq_length": 128}}))
    with pytest.raises(ValueError, match="does not record its model shape"):
        export_hf_checkpoint(str(trained), str(tmp_path / "a"), progress=False)
    with pytest.raises(ValueError, match="does not record its RoPE"):
        export_hf_checkpoint(str(trained), str(tmp_path / "a"), hf_source=str(sharded_llama), progress=False)
    out = tmp_path / "b"
    assert (
        main(
            [
                "export",
                "--load",
                str(trained),
                "--hf-dir",
                str(out),
                "--hf-source",
                str(sharded_llama),
                "--rotary-base",
                "1e7",
                "--max-shard-size-gb",
                "0.00005",
                "--quiet",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 1e7}
    assert config["max_position_embeddings"] == 128  # the trained length
    assert (out / INDEX_NAME).is_file() and (out / "tokenizer.json").is_file()
    with SafetensorsReader(out) as got, SafetensorsReader(sharded_llama) as want:
        assert sorted(got.files) == sorted(want.files)
        for name in want.files:
            assert torch.equal(got.get(name), want.get(name)), name


def test_transformers_4_config_form_is_read_and_written_back(sharded_llama: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    legacy = tmp_path / "legacy"
    legacy.mkdir()
    for f in sharded_llama.iterdir():
        (legacy / f.name).write_bytes(f.read_bytes())
    config = json.loads((legacy / "config.json").read_text())
    params = config.pop("rope_parameters")
    config["rope_theta"] = params.pop("rope_theta")
    config["rope_scaling"] = {"type": params.pop("rope_type"), **params}  # the oldest spelling
    (legacy / "config.json").write_text(json.dumps(config))
    assert main(["import", "--hf-dir", str(legacy), "--save", str(tmp_path / "c"), "--quiet"]) == 0
    assert main(["import", "--hf-dir", str(legacy), "--save", str(tmp_path / "c"), "--quiet"]) == 1  # taken
    rope = CheckpointReader(str(tmp_path / "c")).meta["rope"]
    assert rope["rotary_base"] == 500000.0 and rope["rope_scaling"]["rope_type"] == "llama3"
    assert main(["export", "--load", str(tmp_path / "c"), "--hf-dir", str(tmp_path / "out"), "--quiet"]) == 0
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "rope_parameters" not in written and written["rope_theta"] == 500000.0
    assert written["rope_scaling"]["rope_type"] == "llama3"
    expected = AutoConfig.from_pretrained(sharded_llama).rope_parameters
    assert AutoConfig.from_pretrained(tmp_path / "out").rope_parameters == expected


def test_import_refuses_a_save_with_checkpoints_or_a_live_run_and_leaves_its_files(
    sharded_llama: Path, tmp_path: Path, capsys
) -> None:
    import os
    import socket

    from megatron_anchor._output_lock import OutputLock

    megatron = tmp_path / "megatron"  # Megatron-LM's tracker only, no 'latest'
    (megatron / "iter_0000100").mkdir(parents=True)
    (megatron / "latest_checkpointed_iteration.txt").write_text("100")
    unpointed = tmp_path / "unpointed"  # a complete checkpoint whose pointers are gone
    (unpointed / "iter_0000003").mkdir(parents=True)
    (unpointed / "iter_0000003" / "meta.json").write_text("{}")
    for save, held in ((megatron, "latest_checkpointed_iteration.txt"), (unpointed, "iter_0000003")):
        assert main(["import", "--hf-dir", str(sharded_llama), "--save", str(save), "--quiet"]) == 1
        named = f"--save {save} already holds a checkpoint ({save / held}): give an empty --save"
        assert capsys.readouterr().err == f"error: {named}\n"
    live = tmp_path / "live"  # a run that is writing its first checkpoint
    (live / "iter_0000010.tmp").mkdir(parents=True)
    lock = OutputLock(str(live / "run.lock"), "--save")
    try:
        assert main(["import", "--hf-dir", str(sharded_llama), "--save", str(live), "--quiet"]) == 1
        assert capsys.readouterr().err == (
            f"error: {live / 'run.lock'}: another run (pid {os.getpid()} on {socket.gethostname()}) is "
            f"writing this output; wait for it to finish or choose another --save\n"
        )
        assert (live / "iter_0000010.tmp").is_dir()  # the run's save in progress is left alone
    finally:
        lock.release()


def test_import_onto_a_full_disk_is_one_line_with_the_errno(sharded_llama: Path, tmp_path: Path) -> None:
    """A write that fails inside DCP (here a file size limit, as a full disk or a quota): one line naming
    the checkpoint, the errno and the free space, exit 1."""
    save = tmp_path / "ckpt"
    cmd = [sys.executable, str(REPO / "tools" / "convert_hf_checkpoint.py"), "import", "--hf-dir",
           str(sharded_llama), "--save", str(save), "--quiet"]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=file_size_limit(4096))  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    tmp = save / "iter_0000000.tmp"
    assert proc.stderr.startswith(f"error: writing checkpoint {tmp} failed on rank 0: "), proc.stderr
    assert f"[Errno 27 EFBIG] File too large: '{tmp}'" in proc.stderr  # DCP's, or a probe's after it
    assert len(proc.stderr.strip().splitlines()) == 1 and not (save / "latest").exists()
