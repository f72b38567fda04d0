"""HF -> megatron_anchor -> HF: logits equal transformers' (TP 1 and 2), exact tensor round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from megatron_anchor.checkpoint import CheckpointReader
from megatron_anchor.convert import export_hf_checkpoint, import_hf_checkpoint, tensor_rules
from megatron_anchor.convert.hf_config import shape_from_meta
from megatron_anchor.parallel import free_port
from tests.convert.convert_harness import (
    FAMILIES,
    TOKENIZER_FILES,
    hf_logits,
    logits_worker,
    sample_tokens,
    save_tiny_hf,
)

DIVISIBLE_BY = 8  # vocab 100 pads to 104 at TP 1 and 112 at TP 2: padding rows are exercised


def _import(hf_dir: Path, save: str, tp: int) -> None:
    import_hf_checkpoint(str(hf_dir), save, tp, make_vocab_size_divisible_by=DIVISIBLE_BY, progress=False)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict:
    """Every family saved by transformers and imported at TP 1 and TP 2, with transformers' logits."""
    root = tmp_path_factory.mktemp("parity")
    out = {}
    for family in FAMILIES:
        hf_dir = save_tiny_hf(family, root / f"{family}_hf")
        ckpts = {tp: str(root / f"{family}_tp{tp}") for tp in (1, 2)}
        for tp, path in ckpts.items():
            _import(hf_dir, path, tp)
        out[family] = {"hf": hf_dir, "ckpts": ckpts, "want": hf_logits(hf_dir, sample_tokens())}
    return out


@pytest.fixture(scope="module")
def megatron_results(converted, tmp_path_factory) -> dict:
    """Logits of every converted checkpoint in megatron_anchor's model, from two gloo processes."""
    out = tmp_path_factory.mktemp("logits") / "logits.pt"
    ckpts = {family: item["ckpts"] for family, item in converted.items()}
    mp.spawn(logits_worker, args=(2, free_port(), ckpts, str(out)), nprocs=2, join=True)
    return torch.load(out)


@pytest.mark.parametrize("tp", [1, 2])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers(converted, megatron_results, family: str, tp: int) -> None:
    want = converted[family]["want"]
    got = megatron_results[(family, tp)]
    assert got.shape == want.shape
    assert want.std() > 0.5  # logits of O(1): an absolute tolerance of 1e-4 is meaningful
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)


def test_meta_records_shape_and_rope(converted) -> None:
    meta = CheckpointReader(converted["llama"]["ckpts"][2]).meta
    assert meta["weights_only"] and meta["step"] == 0 and meta["tp"] == 2
    assert meta["model"]["padded_vocab_size"] == 112 and meta["model"]["num_query_groups"] == 2
    assert meta["rope"]["rotary_base"] == 500000.0
    assert meta["rope"]["rope_scaling"]["rope_type"] == "llama3"
    assert CheckpointReader(converted["qwen2"]["ckpts"][1]).meta["model"]["add_qkv_bias"]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_round_trips_and_loads_in_transformers(converted, tmp_path: Path, family: str) -> None:
    item = converted[family]
    exported = tmp_path / "exported"
    export_hf_checkpoint(item["ckpts"][2], str(exported), progress=False)
    original = load_file(item["hf"] / "model.safetensors")
    written = load_file(exported / "model.safetensors")
    tied = family == "qwen2"
    assert set(written) == set(original) - ({"lm_head.weight"} if tied else set())
    for name, tensor in written.items():
        assert torch.equal(tensor, original[name]), name
    for name in TOKENIZER_FILES:
        assert (exported / name).read_text() == TOKENIZER_FILES[name]
    # Re-import the export: every stored shard equals the first import's, bit for bit.
    again = tmp_path / "again"
    _import(exported, str(again), 2)
    first, second = CheckpointReader(item["ckpts"][2]), CheckpointReader(str(again))
    for rule in tensor_rules(shape_from_meta(first.meta["model"])):
        for a, b in zip(first.shards(rule.mcore), second.shards(rule.mcore)):
            assert torch.equal(a, b), rule.mcore
    torch.testing.assert_close(hf_logits(exported, sample_tokens()), item["want"], rtol=0, atol=1e-6)


def test_export_writes_overridden_rope_into_the_config(converted, tmp_path: Path) -> None:
    from transformers import AutoConfig

    from megatron_anchor.convert import RopeOverride

    out = tmp_path / "abf"
    export_hf_checkpoint(
        converted["mistral"]["ckpts"][1],
        str(out),
        rope=RopeOverride(rotary_base=5e6),
        max_position_embeddings=256,
        progress=False,
    )
    config = AutoConfig.from_pretrained(out)
    assert config.rope_parameters["rope_theta"] == 5e6 and config.max_position_embeddings == 256
    assert json.loads((out / "config.json").read_text())["num_key_value_heads"] == 2
