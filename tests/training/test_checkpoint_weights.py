"""Weights-only checkpoints: lazy DCP writing, TE/local norm names in both directions."""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from torch import nn
from torch.distributed.checkpoint import FileSystemReader

import megatron_anchor
from megatron_anchor.checkpoint.names import te_name
from megatron_anchor.checkpoint.weights import CheckpointReader, load_model_weights, write_weights_checkpoint

LOCAL = {
    "decoder.layers.0.input_layernorm.weight": (8,),
    "decoder.layers.0.self_attention.linear_qkv.weight": (12, 8),
    "decoder.layers.0.pre_mlp_layernorm.weight": (8,),
    "decoder.layers.0.mlp.linear_fc1.weight": (16, 8),
}


def _module(names: list[str]) -> nn.Module:
    """A module tree whose state dict has exactly ``names`` (zero parameters of LOCAL's shapes)."""
    root = nn.Module()
    for name, shape in zip(names, LOCAL.values()):
        *path, leaf = name.split(".")
        node = root
        for part in path:
            if not hasattr(node, part):
                node.add_module(part, nn.Module())
            node = getattr(node, part)
        node.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
    return root


def _write(save: Path, names: list[str], tp: int = 2) -> dict[str, torch.Tensor]:
    """A TP checkpoint of random tensors under ``names`` (rank r holds ``full + r``); returns them."""
    g = torch.Generator().manual_seed(0)
    full = {n: torch.randn(shape, generator=g) for n, shape in zip(names, LOCAL.values())}
    metas = {n: [torch.empty(t.shape, device="meta")] * tp for n, t in full.items()}
    calls: list[str] = []

    def produce(name: str) -> list[torch.Tensor]:
        calls.append(name)
        return [full[name] + r for r in range(tp)]

    meta = {"step": 0, "tp": tp, "cp": 1, "dp": 1, "world": tp, "weights_only": True}
    write_weights_checkpoint(str(save), metas, produce, meta)
    assert calls == names  # each tensor produced once, in order, although every TP shard is stored
    return full


def test_te_model_loads_local_checkpoint(tmp_path: Path) -> None:
    full = _write(tmp_path, list(LOCAL))
    stored = FileSystemReader(str(tmp_path / "iter_0000000")).read_metadata().state_dict_metadata
    assert len(stored) == 2 * len(LOCAL)  # tensors only, one file each
    assert len(list((tmp_path / "iter_0000000").glob("*.distcp"))) == 2 * len(LOCAL)
    te_names = [te_name(n) for n in LOCAL]
    assert te_names[0] == "decoder.layers.0.self_attention.linear_qkv.layer_norm_weight"
    model = _module(te_names)
    load_model_weights(str(tmp_path), model, tp_rank=1)
    for local, te in zip(LOCAL, te_names):
        assert torch.equal(model.get_parameter(te), full[local] + 1), te


def test_reader_finds_te_named_tensors_under_local_names(tmp_path: Path) -> None:
    full = _write(tmp_path, [te_name(n) for n in LOCAL])
    reader = CheckpointReader(str(tmp_path))
    assert reader.tp == 2 and reader.meta["weights_only"]
    shards = reader.shards("decoder.layers.0.pre_mlp_layernorm.weight")
    want = full["decoder.layers.0.mlp.linear_fc1.layer_norm_weight"]
    assert torch.equal(shards[0], want) and torch.equal(shards[1], want + 1)
    assert reader.shard_shape("decoder.layers.0.mlp.linear_fc1.weight") == (16, 8)


def test_training_evaluation_and_the_contract_do_not_import_the_hf_converter() -> None:
    """The weight loaders live beside the checkpoint contract: nothing under checkpoint/, training/,
    evaluation/ (or the trainer's entry point) imports the Hugging Face converter package."""
    package = Path(megatron_anchor.__file__).parent
    sources = [package / "pretrain.py"]
    for folder in ("checkpoint", "training", "evaluation"):
        sources += sorted((package / folder).glob("*.py"))
    offenders = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("megatron_anchor.convert")]
    assert offenders == []
