"""The output layer and loss in recomputed chunks: the same token losses and gradients, no logits kept."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.multiprocessing as mp
from test_anchor_model import CFG, _doc_ids, _layout

from megatron_anchor.model import build_anchor_gpt
from megatron_anchor.model.chunked_loss import chunk_label_columns
from megatron_anchor.parallel import free_port
from tests.model import sp_harness


def _loss_and_grads(chunk: int, tie: bool):
    torch.manual_seed(0)
    model = build_anchor_gpt(dataclasses.replace(CFG, loss_chunk_tokens=chunk, untie_embeddings=not tie))
    tokens = torch.randint(0, CFG.vocab_size, (2, 32), generator=torch.Generator().manual_seed(1))
    labels = torch.roll(tokens, -1, dims=1)
    loss = model(tokens, labels, _layout(_doc_ids()))
    (loss * torch.linspace(0.5, 1.5, 32)).sum().backward()  # position-dependent weights: order matters
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("chunk", [7, 32, 100])
@pytest.mark.parametrize("tie", [False, True])
def test_chunked_loss_equals_the_whole_sequence_loss(chunk, tie):
    whole_loss, whole_grads = _loss_and_grads(0, tie)
    loss, grads = _loss_and_grads(chunk, tie)
    assert loss.shape == (2, 32)
    torch.testing.assert_close(loss, whole_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == whole_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, whole_grads[name], rtol=1e-5, atol=1e-6, msg=name)


VOCAB = 160  # no other dimension of CFG has this size


def test_chunked_loss_keeps_no_logits_for_backward():
    """What forward saves for backward: with chunks, nothing of vocabulary size."""
    for chunk, expect_vocab_sized in ((0, True), (8, False)):
        torch.manual_seed(0)
        model = build_anchor_gpt(dataclasses.replace(CFG, loss_chunk_tokens=chunk, vocab_size=VOCAB))
        tokens = torch.randint(0, VOCAB, (2, 32))
        saved: list[torch.Size] = []

        def keep_shape(t, saved=saved):
            saved.append(t.shape)
            return t

        with torch.autograd.graph.saved_tensors_hooks(keep_shape, lambda t: t):
            model(tokens, tokens, _layout(_doc_ids()))
        logits_sized = [shape for shape in saved if shape[-1] == VOCAB and shape.numel() >= 32 * 2 * VOCAB]
        assert bool(logits_sized) == expect_vocab_sized, logits_sized


def test_label_columns_follow_the_sequence_parallel_gather():
    """Shard rows [2, 5) of 6 per TP rank, 3 ranks: each rank's rows come in rank order."""
    assert chunk_label_columns(2, 5, 6, 3).tolist() == [2, 3, 4, 8, 9, 10, 14, 15, 16]
    assert chunk_label_columns(0, 4, 4, 1).tolist() == [0, 1, 2, 3]


def test_chunked_loss_under_sequence_parallel_equals_the_whole_loss(tmp_path):
    """TP=2 with SP, chunks of 6 positions (3 of each rank's 16 rows): token losses in order, gradients."""
    out = tmp_path / "losses.pt"
    mp.spawn(sp_harness.worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    results = torch.load(out)
    (whole_loss, whole_grads), (loss, grads) = results["whole"], results["chunked_sp"]
    torch.testing.assert_close(loss, whole_loss, rtol=1e-6, atol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, whole_grads[name], rtol=1e-5, atol=1e-6, msg=name)
