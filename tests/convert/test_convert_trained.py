"""A checkpoint written by the trainer (TP=2, torchrun) from a converted model, with a tokenizer smaller than
the model's vocabulary, exports to a HF model with the trainer's eval loss: with the source model named or
not, keeping the model's vocabulary and writing the training tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from megatron_anchor.checkpoint import CheckpointReader
from megatron_anchor.convert import import_hf_checkpoint, trainer_flags
from megatron_anchor.training.batches import MockPackedDataset
from tests.convert.convert_harness import SEQ, save_tiny_hf
from tests.training.packed_data import write_hf_tokenizer
from tests.training.train_harness import run_pretrain
from tools.convert_hf_checkpoint import main as convert_main


def test_trained_checkpoint_exports_with_the_trainers_eval_loss(tmp_path: Path) -> None:
    hf_dir = save_tiny_hf("llama", tmp_path / "hf")  # llama3 RoPE scaling: it must survive the round trip
    converted = tmp_path / "converted"
    import_hf_checkpoint(str(hf_dir), str(converted), 2, make_vocab_size_divisible_by=8, progress=False)
    meta = CheckpointReader(str(converted)).meta
    run = tmp_path / "run"
    model_flags = trainer_flags(meta["model"], meta["rope"], 2)
    del model_flags[model_flags.index("--vocab-size") : model_flags.index("--vocab-size") + 2]
    # 97 ids for a model of 100: both pad to the checkpoint's 112 rows, so the sizes alone cannot tell.
    tokenizer = write_hf_tokenizer(tmp_path / "tokenizer", vocab=97)
    flags = model_flags + [
        "--load",
        str(converted),
        "--tokenizer-type",
        "HuggingFaceTokenizer",
        "--tokenizer-model",
        tokenizer,
        "--attention-mode",
        "causal",
        "--position-ids",
        "global",
        "--seq-length",
        str(SEQ),
        "--mock-data",
        "--train-iters",
        "1",
        "--micro-batch-size",
        "1",
        "--global-batch-size",
        "2",
        "--lr",
        "1e-2",
        "--eval-interval",
        "1",
        "--eval-iters",
        "1",
        "--save",
        str(run),
        "--seed",
        "5",
    ]
    records, proc = run_pretrain(2, flags, tmp_path)
    eval_loss = next(r["eval_loss"] for r in records if "eval_loss" in r)
    kept = "the model keeps its vocabulary of 100 (ids 97-99 unused)"
    assert f"--tokenizer-model {tokenizer} (97 ids): not the tokenizer checkpoint" in proc.stdout
    assert kept in proc.stdout and CheckpointReader(str(run)).meta["model"]["vocab_size"] == 100

    out = tmp_path / "exported"  # all from the checkpoint: model, RoPE, source config, tokenizer
    assert convert_main(["export", "--load", str(run), "--hf-dir", str(out), "--quiet"]) == 0
    named = tmp_path / "named"  # the original Hugging Face directory named as the source
    assert convert_main(["export", "--load", str(run), "--hf-dir", str(named), "--hf-source", str(hf_dir),
                         "--quiet"]) == 0  # fmt: skip
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (out / name).read_bytes() == (named / name).read_bytes(), name
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "tokenizer" / "tokenizer.json").read_bytes()
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 100 and config["max_position_embeddings"] == 64  # the source's context
    # The trainer's validation batch: samples 0 and 1 of the mock validation split (seed + 1).
    valid = MockPackedDataset(SEQ, 100, 2, seed=5 + 1, position_ids="global")
    tokens = torch.stack([valid[i]["tokens"] for i in range(2)])  # [b, s]
    labels = torch.stack([valid[i]["labels"] for i in range(2)])
    logits, hidden = _logits_and_head_input(out, tokens)  # [b, s, 100], [b, s, h]
    # The trainer's softmax also covers the padded vocabulary rows (random in a run from scratch), which
    # the export drops: add their logits from the checkpoint to reproduce its loss exactly.
    reader = CheckpointReader(str(run))
    head = torch.cat(reader.shards("output_layer.weight"))  # [112, h]
    logits = torch.cat([logits, hidden @ head[100:].T], dim=-1)  # [b, s, 112]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)).item()
    assert abs(loss - eval_loss) <= 1e-5 * eval_loss, (loss, eval_loss)


@torch.no_grad()
def _logits_and_head_input(hf_dir: Path, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' logits ``[b, s, v]`` and the final hidden states entering ``lm_head`` ``[b, s, h]``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    seen = []
    model.lm_head.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    return model(tokens).logits, seen[0]
