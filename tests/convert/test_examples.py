"""examples/: every script parses (bash -n); the launch scripts' flags pass the trainer's --dry-run."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_anchor.checkpoint import checkpoint_meta, write_meta
from megatron_anchor.convert.hf_config import model_meta, rope_meta, trainer_flags
from megatron_anchor.convert.hf_mapping import shape_from_hf_config
from megatron_anchor.model import pad_vocab_size
from megatron_anchor.training import build_parser, validate_args
from tests.training.packed_data import write_packed

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

# The published config.json values of the two models the examples extend.
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "num_hidden_layers": 32,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}
LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 8192,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
# script, nodes, the HF config it starts from, and what the run must be: (S, RoPE base, TP, CP)
RUNS = [
    ("llama2_7b_64k.sh", 4, LLAMA2_7B, (65536, 5e6, 2, 4)),
    ("llama3_8b_128k.sh", 8, LLAMA3_8B, (131072, 1e7, 2, 8)),
]
SHAPE_FIELDS = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "vocab_size",
    "make_vocab_size_divisible_by",
    "norm_epsilon",
    "add_qkv_bias",
    "untie_embeddings_and_output_weights",
    "rotary_base",
    "tensor_model_parallel_size",
)


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS="ignore", **env)
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=120)


def _config(stdout: str) -> dict:
    """The resolved configuration a dry run prints last."""
    return json.loads(stdout.split("resolved configuration:\n", 1)[1])


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> dict[int, str]:
    """A packed dataset at each recipe's sequence length (the dry run opens it and checks its samples)."""
    work = tmp_path_factory.mktemp("examples")
    return {s: write_packed(work / f"s{s}_text_document", seq_length=s, samples=2) for s in (65536, 131072)}


SCRIPTS = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".sh", ".sbatch"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_parses(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(EXAMPLES / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _converted(tmp_path: Path, hf_config: dict, base: float, tp: int) -> dict[str, str]:
    """The metadata of ``hf_config`` converted at TP ``tp`` with RoPE base ``base`` (what the dry run
    reads), and the CKPT/SAVE environment of the example scripts pointing at it."""
    padded = pad_vocab_size(hf_config["vocab_size"], 128, tp)
    record = {
        "model": model_meta(shape_from_hf_config(hf_config, padded), hf_config, 128),
        "rope": rope_meta(base, None, 1.0),
    }
    meta = checkpoint_meta(
        step=0,
        consumed_samples=0,
        record=record,
        tokenizer=None,
        schedule=None,
        sizes={"tp": tp, "cp": 1, "dp": 1, "world": tp},
        weights_only=True,
    )
    ckpt = tmp_path / "converted"
    (ckpt / "iter_0000000").mkdir(parents=True)
    write_meta(str(ckpt / "iter_0000000"), meta)
    (ckpt / "latest").write_text("iter_0000000\n")
    return {"CKPT": str(ckpt), "SAVE": str(tmp_path / "run")}


@pytest.mark.parametrize("script,nodes,hf_config,expected", RUNS)
def test_launch_flags_pass_the_trainer_dry_run(
    script: str, nodes: int, hf_config: dict, expected, packed, tmp_path: Path
) -> None:
    """The dry run checks the script's flags, data and the converted checkpoint's recorded model."""
    seq = expected[0]
    env = {"DRY_RUN": "1", "NNODES": str(nodes), "GPUS_PER_NODE": "8", "DATA": packed[seq]}
    env.update(_converted(tmp_path, hf_config, *expected[1:3]))
    proc = _run(["bash", f"examples/{script}"], env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # TensorBoard's default directory is kept: a machine without the package gets a warning, not a failure.
    if importlib.util.find_spec("tensorboard") is None:
        assert "warning: --tensorboard-dir needs the tensorboard package" in proc.stdout
    assert f"note: data {packed[seq]}: packed-anchor samples, 2 of {seq + 1:,} tokens" in proc.stdout
    config = _config(proc.stdout)
    seq, base, tp, cp = expected
    assert (config["seq_length"], config["rotary_base"]) == (seq, base)
    assert (config["tensor_model_parallel_size"], config["context_parallel_size"]) == (tp, cp)
    assert config["data_parallel_size"] == nodes * 8 // (tp * cp)
    assert config["recompute_granularity"] == "full" and config["attention_mode"] == "anchor"
    assert config["bf16"] and config["use_distributed_optimizer"]
    assert config["sequence_parallel"] and config["exit_signal_handler"] and config["cp_layout"] == "balanced"
    # The model flags are the ones the converter prints for this model (with the run's RoPE base).
    padded = pad_vocab_size(hf_config["vocab_size"], 128, tp)
    meta = model_meta(shape_from_hf_config(hf_config, padded), hf_config, 128)
    flags = trainer_flags(meta, rope_meta(base, None, 1.0), tp) + ["--seq-length", "1", "--train-iters", "1"]
    converted = vars(validate_args(build_parser().parse_args([*flags, "--mock-data"]), nodes * 8))
    for field in SHAPE_FIELDS:
        assert config[field] == converted[field], field


def test_slurm_wrapper_launches_the_script_per_node(tmp_path: Path, packed) -> None:
    # Stand-ins for Slurm's commands: scontrol lists two hosts, srun runs its command as node 0.
    (tmp_path / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'gpu-a\\ngpu-b\\n'\n")
    (tmp_path / "srun").write_text(
        '#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\nSLURM_NODEID=0 exec "$@"\n'
    )
    for tool in ("scontrol", "srun"):
        (tmp_path / tool).chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "DRY_RUN": "1",
        "DATA": packed[131072],
        **_converted(tmp_path, LLAMA3_8B, 1e7, 2),
    }
    script = ["bash", "examples/slurm_train.sbatch", "examples/llama3_8b_128k.sh", "--train-iters", "70"]
    proc = _run(script, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = _config(proc.stdout)
    assert config["world_size"] == 16 and config["train_iters"] == 70
