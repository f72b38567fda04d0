"""Megatron's --decoupled-lr / --decoupled-min-lr: the input embedding and output layer get their own LR
schedule. Against megatron-core's own parameter grouping (``_get_param_groups``) and its
``OptimizerParamScheduler``, step by step."""

from __future__ import annotations

import dataclasses
import types

import pytest
import torch
from megatron.core.optimizer import OptimizerConfig, _get_param_groups
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from megatron_anchor.model import AnchorGPTConfig, build_anchor_gpt
from megatron_anchor.training import build_parser, validate_args
from megatron_anchor.training.build import build_optimizer, embedding_and_output_names, group_lr

CFG = AnchorGPTConfig(num_layers=2, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4, vocab_size=64,
                      seq_length=16)  # fmt: skip
FLAGS = "--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --mock-data --vocab-size 64"


@pytest.mark.parametrize("untie, decoupled_min", [(True, "2e-5"), (False, None)])
def test_embedding_and_output_follow_their_own_schedule_as_megatron_core(untie, decoupled_min):
    torch.manual_seed(0)
    model = build_anchor_gpt(dataclasses.replace(CFG, untie_embeddings=untie))
    extra = "--decoupled-lr 5e-3" + (f" --decoupled-min-lr {decoupled_min}" if decoupled_min else "")
    argv = f"{FLAGS} --train-iters 10 --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine {extra}".split()
    args = validate_args(build_parser().parse_args(argv), 1)
    ours = build_optimizer(model, args, embedding_and_output_names(model))
    low = None if decoupled_min is None else float(decoupled_min)
    config = OptimizerConfig(lr=1e-3, min_lr=1e-4, decoupled_lr=5e-3, decoupled_min_lr=low, weight_decay=0.01)
    groups = _get_param_groups([model], config, None)
    schedule = OptimizerParamScheduler(
        types.SimpleNamespace(param_groups=groups), init_lr=0.0, max_lr=1e-3, min_lr=1e-4, lr_warmup_steps=0,
        lr_decay_steps=10, lr_decay_style="cosine", start_wd=0.01, end_wd=0.01, wd_incr_steps=10,
        wd_incr_style="constant",
    )  # fmt: skip
    theirs_group = {id(p): g for g in groups for p in g["params"]}
    ours_group = {id(p): g for g in ours.param_groups for p in g["params"]}
    assert set(theirs_group) == set(ours_group) == {id(p) for p in model.parameters()}
    decoupled = [p for p in model.parameters() if theirs_group[id(p)].get("max_lr") == 5e-3]
    assert len(decoupled) == (2 if untie else 1)  # the embedding, and the output layer unless tied
    for step in range(12):  # Megatron's LR of step k is its scheduler's after k increments
        for p in model.parameters():
            want = schedule.get_lr(theirs_group[id(p)])
            assert group_lr(args, ours_group[id(p)], step) == pytest.approx(want, rel=1e-12), (step, p.shape)
            assert ours_group[id(p)]["weight_decay"] == theirs_group[id(p)]["wd_mult"] * 0.01
        schedule.step(1)
