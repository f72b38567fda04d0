"""Spawned TP ranks: token losses and gradients of a small model with SP, whole-sequence vs chunked loss."""

from __future__ import annotations

import os

import torch

SEQ, BATCH, VOCAB = 32, 2, 160


def _doc_ids() -> torch.Tensor:
    doc = torch.zeros(BATCH, SEQ, dtype=torch.long)
    doc[0, 1:12], doc[0, 12:] = 1, 2
    doc[1, 1:5], doc[1, 5:20], doc[1, 20:] = 1, 2, 3
    return doc


def _run(chunk: int, sequence_parallel: bool) -> tuple[torch.Tensor, dict]:
    from megatron_anchor.data import position_ids_from_doc_ids
    from megatron_anchor.model import AnchorGPTConfig, AnchorLayout, build_anchor_gpt

    cfg = AnchorGPTConfig(
        num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
        vocab_size=VOCAB, seq_length=SEQ, sequence_parallel=sequence_parallel, loss_chunk_tokens=chunk,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_anchor_gpt(cfg, tp_size=2)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    doc = _doc_ids()
    layout = AnchorLayout(doc_ids=doc, positions=position_ids_from_doc_ids(doc, "global"))
    loss = model(tokens, torch.roll(tokens, -1, dims=1), layout)  # [b, s]
    (loss * torch.linspace(0.5, 1.5, SEQ)).sum().backward()  # position-dependent: the order matters
    for p in model.parameters():
        if getattr(p, "sequence_parallel", False):  # SP norm weights: partial sums over the TP ranks
            torch.distributed.all_reduce(p.grad)
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def worker(rank: int, world: int, port: int, out: str) -> None:
    """TP=2: the whole-sequence loss without SP, then with SP and chunks of 6 positions (3 rows of each
    16-row shard, the last chunk 1 row); rank 0 saves."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ps.initialize_model_parallel(tensor_model_parallel_size=2)
        results = {"whole": _run(0, False), "chunked_sp": _run(6, True)}
        ps.destroy_model_parallel()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(results, out)
