"""Megatron-LM checkpoints: a ``torch_dist`` checkpoint written by megatron-core's own GPTModel and
``dist_checkpointing.save`` (tests/training/megatron_writer.py) is found through Megatron-LM's tracker file,
gives the model shape from its args, loads tensor for tensor, trains here from --pretrained-checkpoint and
exports to Hugging Face. A checkpoint of an architecture this model cannot build is refused by name."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from crafted_pickle import RunsOnUnpickle
from train_harness import REPO, TINY, run_pretrain, step_losses

from megatron_anchor.checkpoint import CheckpointError
from megatron_anchor.parallel import free_port
from megatron_anchor.training import build_parser, validate_args

WRITER = Path(__file__).with_name("megatron_writer.py")
# TINY without its model flags (the checkpoint's args give them), three steps.
RUN = [*TINY[TINY.index("--seq-length") :], "--train-iters", "3", "--lr-warmup-iters", "1"]


def _write_megatron_checkpoint(out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore",
               WRITER_PORT=str(free_port()))  # fmt: skip
    out.mkdir()
    proc = subprocess.run([sys.executable, str(WRITER), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "check.json").read_text())


def test_megatron_torch_dist_checkpoint_loads_trains_and_exports(tmp_path):
    meg = tmp_path / "megatron"
    check = _write_megatron_checkpoint(meg)
    # Read back through the tracker (latest_checkpointed_iteration.txt = "100"), the shape from its args:
    # every tensor equal to megatron-core's own (stacked layers, TE-named norms, the SwiGLU factory).
    assert check["tensors"] == 15 and check["max_abs_diff"] == 0.0, check
    shape = "--num-layers 2 --hidden-size 64 --ffn-hidden-size 128 --num-attention-heads 4 --num-query-groups"
    assert f"{shape} 2" in check["notes"][0]
    source = meg / "iter_0000100"

    run = tmp_path / "run"
    flags = [*RUN, "--pretrained-checkpoint", str(meg), "--load", str(run), "--save", str(run)]
    records, proc = run_pretrain(1, flags, tmp_path)
    assert f"--load {run} holds no checkpoint yet: starting from the weights of --pretrained-checkpoint " \
           f"{source} at step 0" in proc.stdout  # fmt: skip
    assert f"resumed from {source} at step 0: model weights of a Megatron-LM checkpoint (its iteration 100" \
        in proc.stdout  # fmt: skip
    assert sorted(step_losses(records)) == [1, 2, 3]
    meta = json.loads((run / "iter_0000003" / "meta.json").read_text())
    assert meta["converted_from"] == str(source) and meta["model"]["num_query_groups"] == 2

    from safetensors import safe_open

    from megatron_anchor.checkpoint import CheckpointReader
    from megatron_anchor.convert import export_hf_checkpoint

    hf = tmp_path / "hf"
    export_hf_checkpoint(str(run), str(hf), dtype="float32", progress=False)
    config = json.loads((hf / "config.json").read_text())
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["vocab_size"]) == (2, 2, 256)
    reader = CheckpointReader(str(run))
    written = torch.load(meg / "written.pt")
    with safe_open(hf / "model.safetensors", framework="pt") as exported:
        for mcore, hf_name in [
            ("decoder.final_layernorm.weight", "model.norm.weight"),
            ("decoder.layers.1.pre_mlp_layernorm.weight", "model.layers.1.post_attention_layernorm.weight"),
            ("embedding.word_embeddings.weight", "model.embed_tokens.weight"),
        ]:
            trained = reader.shards(mcore)[0]
            assert torch.equal(exported.get_tensor(hf_name), trained), hf_name  # exported as trained
            moved = (trained - written[mcore]).abs().max().item()
            assert 0 < moved < 0.01, (mcore, moved)  # three Adam steps of at most 2e-3 from Megatron's


def _hand_made_megatron(path: Path, **args) -> Path:
    """A directory with megatron-core's metadata.json and a common.pt holding ``args`` (no tensors)."""
    path.mkdir(parents=True)
    config = {"sharded_backend": "torch_dist", "sharded_backend_version": 1, "common_backend": "torch"}
    (path / "metadata.json").write_text(json.dumps({**config, "common_backend_version": 1}))
    torch.save({"args": argparse.Namespace(**args), "iteration": 7}, path / "common.pt")
    return path


def test_a_megatron_checkpoint_of_another_architecture_is_refused_by_name(tmp_path):
    """GPT-3 style args (Megatron's defaults: LayerNorm, GeLU, biases, learned positions): the architecture
    this model builds is taken from them, the learned positions it cannot build are named in one line;
    reading the args runs nothing the file asks for."""
    marker = tmp_path / "ran"
    gpt3 = dict(num_layers=2, hidden_size=64, num_attention_heads=4, normalization="LayerNorm",
                swiglu=False, add_bias_linear=True, hidden_dropout=0.1,
                init_method_std=RunsOnUnpickle(f"touch {marker}"))  # fmt: skip
    ckpt = _hand_made_megatron(tmp_path / "gpt3" / "iter_0000007", **gpt3,
                               position_embedding_type="learned_absolute")  # fmt: skip
    (ckpt.parent / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(ValueError) as err:
        validate_args(build_parser().parse_args([*RUN, "--load", str(ckpt.parent)]), 1)
    assert str(err.value) == (
        f"Megatron-LM checkpoint {ckpt} was trained with --position-embedding-type learned_absolute: this "
        "model is built with --position-embedding-type rope, so its weights cannot be loaded"
    )
    assert not marker.exists()
    rope = _hand_made_megatron(tmp_path / "rope" / "iter_0000007", **gpt3, position_embedding_type="rope")
    (rope.parent / "latest_checkpointed_iteration.txt").write_text("7")
    args = validate_args(build_parser().parse_args([*RUN, "--load", str(rope.parent)]), 1)
    assert (args.normalization, args.swiglu, args.add_bias_linear) == ("LayerNorm", False, True)
    assert args.hidden_dropout == 0.1 and not marker.exists()


def test_a_megatron_torch_format_checkpoint_is_named_with_how_to_convert_it(tmp_path):
    legacy = tmp_path / "legacy"  # Megatron-LM --ckpt-format torch: a file per model-parallel rank
    (legacy / "iter_0000100" / "mp_rank_00").mkdir(parents=True)
    (legacy / "iter_0000100" / "mp_rank_00" / "model_optim_rng.pt").write_bytes(b"")
    (legacy / "latest_checkpointed_iteration.txt").write_text("100")
    how = ("is a Megatron-LM --ckpt-format torch checkpoint (mp_rank_*/model_optim_rng.pt), and only "
           "torch_dist ones are read: convert it with Megatron-LM's training script (--ckpt-convert-format "
           "torch_dist --ckpt-convert-save DIR), then give DIR/torch_dist")  # fmt: skip
    tracker = legacy / "latest_checkpointed_iteration.txt"
    for load, message in [
        (legacy, f"--load: {tracker} names {legacy / 'iter_0000100'}, which {how}"),
        (legacy / "iter_0000100", f"--load {legacy / 'iter_0000100'} {how}"),
    ]:
        with pytest.raises(ValueError) as err:
            validate_args(build_parser().parse_args([*RUN, "--load", str(load)]), 1)
        assert str(err.value) == message


def test_export_of_a_megatron_checkpoint_is_one_line_saying_what_to_do(tmp_path, capsys):
    from tools.convert_hf_checkpoint import main

    ckpt = _hand_made_megatron(tmp_path / "meg" / "iter_0000007", num_layers=2)
    (ckpt.parent / "latest_checkpointed_iteration.txt").write_text("7")
    assert main(["export", "--load", str(ckpt.parent), "--hf-dir", str(tmp_path / "hf"), "--quiet"]) == 1
    assert capsys.readouterr().err == (
        f"error: {ckpt} is a Megatron-LM torch_dist checkpoint, which export does not read: train from it "
        f"with --pretrained-checkpoint {ckpt} and --save, then export that run's checkpoint\n"
    )


@pytest.mark.parametrize("writer", ["pickle", "torch legacy"])
def test_a_common_pt_in_the_legacy_format_is_refused_unread(tmp_path, writer):
    """megatron-core writes common.pt as a zip file; a file in torch's legacy (non-zip) format, whose first
    records torch.load unpickles before its Unpickler takes over, is refused by name, through the dry
    run's --load, and whatever it holds runs nothing."""
    marker = tmp_path / "ran"
    ckpt = _hand_made_megatron(tmp_path / "meg" / "iter_0000007", num_layers=2)
    payload = {"args": RunsOnUnpickle(f"touch {marker}"), "iteration": 7}
    if writer == "pickle":
        (ckpt / "common.pt").write_bytes(pickle.dumps(RunsOnUnpickle(f"touch {marker}")))
    else:
        torch.save(payload, ckpt / "common.pt", _use_new_zipfile_serialization=False)
    (ckpt.parent / "latest_checkpointed_iteration.txt").write_text("7")
    with pytest.raises(ValueError) as err:
        validate_args(build_parser().parse_args([*RUN, "--load", str(ckpt.parent)]), 1)
    assert not marker.exists()
    refused = f"{ckpt / 'common.pt'}: not a megatron-core common state (not torch's zip format)"
    assert refused in str(err.value)


def test_a_pickle_with_a_zip_directory_appended_is_refused_as_torch_would_read_it(tmp_path, monkeypatch):
    """zipfile finds an archive by the directory at its end, torch.load by the signature at its start: a
    pickle followed by an empty archive passes the first and is read by torch in the legacy format, whose
    first record is unpickled by ``pickle_module.load``. The zip check must be torch's own, and refuse it
    even were that load unrestricted."""
    import io
    import zipfile

    from megatron_anchor.checkpoint import megatron

    marker = tmp_path / "ran"
    ckpt = _hand_made_megatron(tmp_path / "meg" / "iter_0000007", num_layers=2)
    archive = io.BytesIO()
    zipfile.ZipFile(archive, "w").close()
    (ckpt / "common.pt").write_bytes(pickle.dumps(RunsOnUnpickle(f"touch {marker}")) + archive.getvalue())
    assert zipfile.is_zipfile(ckpt / "common.pt")
    monkeypatch.setattr(megatron._PICKLE, "load", pickle.load)
    with pytest.raises(CheckpointError) as err:
        megatron.read_common(str(ckpt))
    refused = f"{ckpt / 'common.pt'}: not a megatron-core common state (not torch's zip format)"
    assert str(err.value) == refused
    assert not marker.exists()
