"""Convert a Hugging Face model, then train from it under DDP and FSDP2 with no model flags: the model comes
from the converted checkpoint's metadata, and the first loss is transformers' loss on the same batch."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from megatron_anchor.convert import import_hf_checkpoint, rope_from_hf
from megatron_anchor.training import build_parser, validate_args
from megatron_anchor.training.batches import MockPackedDataset
from tests.convert.convert_harness import SEQ, save_tiny_hf
from tests.training.train_harness import run_pretrain, step_losses
from tools.convert_hf_checkpoint import main as convert_main

# Qwen2 family: RoPE base 1e6, qkv bias, tied embeddings, norm eps 1e-6: none of them the trainer's defaults.
RUN = [*f"--seq-length {SEQ} --mock-data --micro-batch-size 1 --global-batch-size 2".split(), "--seed", "5"]
RUN += [*"--train-iters 2 --lr 1e-2 --lr-warmup-iters 0 --log-interval 1".split()]


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, Path]:
    """(the HF directory, its conversion at TP 1)."""
    tmp = tmp_path_factory.mktemp("qwen2")
    hf = save_tiny_hf("qwen2", tmp / "hf")
    import_hf_checkpoint(str(hf), str(tmp / "ckpt"), 1, make_vocab_size_divisible_by=8, progress=False)
    return hf, tmp / "ckpt"


def test_model_flags_come_from_the_converted_checkpoint(converted):
    _, ckpt = converted
    args = validate_args(build_parser().parse_args([*RUN, "--load", str(ckpt)]), 2)
    assert args.rotary_base == 1e6 and args.rope_scaling is None  # not the default 10000: recorded 1e6
    assert args.add_qkv_bias and not args.untie_embeddings_and_output_weights
    assert (args.norm_epsilon, args.vocab_size, args.ffn_hidden_size) == (1e-6, 100, 96)
    # The source was trained causal; the attention mode is a training choice: anchor unless asked, said once.
    assert args.attention_mode == "anchor" and args.checkpoint_notes[-1].startswith(
        "--attention-mode anchor (the default) trains this run; checkpoint"
    )
    assert (args.normalization, args.swiglu, args.add_bias_linear) == ("RMSNorm", True, False)  # recorded
    extended = validate_args(
        build_parser().parse_args([*RUN, "--load", str(ckpt), "--rotary-base", "5e6"]), 2
    )
    assert extended.rotary_base == 5e6
    assert (
        "deliberate change from the checkpoint: --rotary-base 5000000.0 replaces the checkpoint's 1000000.0"
        in (extended.checkpoint_notes)
    )
    with pytest.raises(ValueError, match="--num-query-groups 4 contradicts checkpoint .* num_query_groups 2"):
        validate_args(build_parser().parse_args([*RUN, "--load", str(ckpt), "--num-query-groups", "4"]), 2)


@torch.no_grad()
def _transformers_loss(hf_dir: Path, padded_vocab: int) -> float:
    """transformers' mean token loss on the first global batch (mock samples 0 and 1, seed 5)."""
    from transformers import AutoModelForCausalLM

    data = MockPackedDataset(SEQ, 100, 2, seed=5, position_ids="global")
    tokens = torch.stack([data[i]["tokens"] for i in range(2)])  # [b, s]
    labels = torch.stack([data[i]["labels"] for i in range(2)])
    logits = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()(tokens).logits
    # The converter pads the output layer with zero rows, whose logits (0) the trainer's softmax includes.
    logits = torch.cat([logits, logits.new_zeros(*logits.shape[:2], padded_vocab - logits.shape[-1])], dim=-1)
    return F.cross_entropy(logits.reshape(-1, padded_vocab), labels.reshape(-1)).item()


@pytest.mark.parametrize("wrapping", ["ddp", "fsdp2"])
def test_converted_checkpoint_trains_under_ddp_and_fsdp2(converted, wrapping, tmp_path):
    hf, ckpt = converted
    extra = ["--use-distributed-optimizer"] if wrapping == "fsdp2" else []
    extra += ["--attention-mode", "causal"]  # transformers' model attends causally over the whole sample
    records, proc = run_pretrain(
        2, [*RUN, *extra, "--load", str(ckpt), "--save", str(tmp_path / "run")], tmp_path
    )
    assert "at step 0: model weights (a weights-only checkpoint)" in proc.stdout
    losses = step_losses(records)
    want = _transformers_loss(hf, 104)
    assert abs(losses[1] - want) <= 1e-5 * want, (losses[1], want)
    assert sorted(losses) == [1, 2] and math.isfinite(losses[2])
    meta = json.loads((tmp_path / "run" / "iter_0000002" / "meta.json").read_text())
    assert meta["model"]["architecture"] == "Qwen2ForCausalLM" and rope_from_hf(meta["hf_config"])[0] == 1e6
    assert meta["rope"]["rotary_base"] == 1e6 and meta["model"]["attention_mode"] == "causal"
    if wrapping == "ddp":  # the trained checkpoint exports with no --hf-source and no RoPE flags
        out = tmp_path / "exported"
        assert convert_main(["export", "--load", str(tmp_path / "run"), "--hf-dir", str(out), "--quiet"]) == 0
        config = json.loads((out / "config.json").read_text())
        assert (
            rope_from_hf(config)[0] == 1e6
            and config["tie_word_embeddings"]
            and config["num_hidden_layers"] == 2
        )


def test_export_refuses_an_hf_source_of_another_shape(converted, tmp_path, capsys):
    hf, ckpt = converted
    other = tmp_path / "one_layer"
    shutil.copytree(hf, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    flags = ["export", "--load", str(ckpt), "--hf-dir", str(tmp_path / "out"), "--quiet"]
    assert convert_main([*flags, "--hf-source", str(other)]) == 1
    assert f"--hf-source {other} has num_layers 1, the checkpoint 2" in capsys.readouterr().err
    assert convert_main([*flags, "--hf-source", str(hf), "--rotary-base", "2e6"]) == 0
    assert (
        "note: RoPE changed on purpose: rotary_base 2000000.0 (checkpoint: 1000000.0)"
        in capsys.readouterr().out
    )
