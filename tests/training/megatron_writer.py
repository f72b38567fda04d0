"""A Megatron-LM ``torch_dist`` checkpoint written by megatron-core's own code, then read back here.

``python megatron_writer.py OUT`` (one process, gloo):
1. megatron-core's ``GPTModel`` (its local layer spec with RMSNorm, SwiGLU, no biases, GQA, untied) with
   random weights is saved with ``dist_checkpointing.save`` as Megatron-LM's ``save_checkpoint`` does:
   ``{"model": model.sharded_state_dict(), "args": ..., "iteration": 100, "checkpoint_version": 3.0}`` into
   ``OUT/iter_0000100`` and ``"100"`` into ``OUT/latest_checkpointed_iteration.txt``. ``args`` carries
   Megatron-LM core_v0.16.0's argument names (``megatron/training/arguments.py``), an enum among them.
2. This project's model, built from the trainer's flags with the model flags left out (taken from the
   checkpoint's args), loads it through ``load_verified_weights``; ``OUT/check.json`` records how many
   tensors were compared and the largest difference from the writer's own tensors (``OUT/written.pt``).

megatron-core's ``torch_dist`` writer is written for GPUs: it calls ``torch.cuda.synchronize()`` after its
host copies, sends a failure flag with ``device=torch.cuda.current_device()`` and logs its memory through
psutil. On a CPU-only torch without psutil those three calls are replaced by their CPU meaning (nothing to
wait for, a CPU tensor, no memory figure); the bytes written are megatron-core's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F

ITERATION = 100
SHAPE = dict(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2)
VOCAB = 256


def megatron_args() -> argparse.Namespace:
    """The arguments Megatron-LM would store for this model (core_v0.16.0 names)."""
    from megatron.core.transformer.enums import AttnBackend

    return argparse.Namespace(
        **SHAPE, group_query_attention=True, kv_channels=16, normalization="RMSNorm", swiglu=True,
        add_bias_linear=False, add_qkv_bias=False, untie_embeddings_and_output_weights=True,
        layernorm_epsilon=1e-5, layernorm_zero_centered_gamma=False, qk_layernorm=False, num_experts=None,
        multi_latent_attention=False, position_embedding_type="rope", rotary_base=10000, rotary_percent=1.0,
        rotary_interleaved=False, use_rope_scaling=False, rotary_seq_len_interpolation_factor=None,
        init_method_std=0.02, make_vocab_size_divisible_by=128, padded_vocab_size=VOCAB, vocab_size=None,
        seq_length=64, max_position_embeddings=64, tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1, params_dtype=torch.float32, attention_backend=AttnBackend.auto,
        tokenizer_type="NullTokenizer", ckpt_format="torch_dist",
    )  # fmt: skip


def write(out: str) -> dict[str, torch.Tensor]:
    """Save a megatron-core GPTModel as Megatron-LM does; returns its state dict."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.models.gpt import GPTModel
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer import TransformerConfig

    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.current_device = lambda: "cpu"
    filesystem_async._process_memory = lambda: 0
    config = TransformerConfig(
        **SHAPE, normalization="RMSNorm", gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, layernorm_epsilon=1e-5, use_cpu_initialization=True,
    )  # fmt: skip
    torch.manual_seed(11)
    model = GPTModel(
        config, get_gpt_layer_local_spec(normalization="RMSNorm"), vocab_size=VOCAB, max_sequence_length=64,
        position_embedding_type="rope", share_embeddings_and_output_weights=False,
    )  # fmt: skip
    with torch.no_grad():  # norms away from 1, so that a norm loaded into the wrong place shows
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    path = os.path.join(out, f"iter_{ITERATION:07d}")
    os.makedirs(path)
    state = {"model": model.sharded_state_dict(), "args": megatron_args(), "iteration": ITERATION,
             "checkpoint_version": 3.0, "num_floating_point_operations_so_far": 0}  # fmt: skip
    dist_checkpointing.save(state, path)
    with open(os.path.join(out, "latest_checkpointed_iteration.txt"), "w") as f:
        f.write(str(ITERATION))
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "_extra_state" not in k}


def read_back(out: str, written: dict[str, torch.Tensor]) -> dict:
    """This project's model from the checkpoint's args, loaded with its loader; compared with ``written``."""
    from megatron_anchor.checkpoint import load_verified_weights
    from megatron_anchor.training import build_parser, validate_args
    from megatron_anchor.training.build import build_model, build_model_config
    from megatron_anchor.training.parallel import ParallelDims
    from megatron_anchor.training.vocab import resolve_vocab_size

    flags = f"--seq-length 64 --train-iters 1 --mock-data --vocab-size {VOCAB} --load {out}".split()
    args = validate_args(build_parser().parse_args(flags), world_size=1)
    dims = ParallelDims(tp=1, cp=1, dp=1, rank=0, tp_rank=0, cp_rank=0, dp_rank=0)
    model = build_model(build_model_config(args, resolve_vocab_size(args)), dims, torch.device("cpu"), 5)
    load_verified_weights(args.load_checkpoint, model, 1, 0)
    mine = {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}
    assert sorted(mine) == sorted(written), sorted(set(mine) ^ set(written))
    diff = max((mine[k] - written[k]).abs().max().item() for k in written)
    return {"tensors": len(written), "max_abs_diff": diff, "notes": args.checkpoint_notes}


def main(out: str) -> None:
    sys.modules.setdefault("wandb", None)  # megatron-core imports wandb when installed (seconds); unused here
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("WRITER_PORT", "29631"))
    dist.init_process_group("gloo", rank=0, world_size=1)
    from megatron.core import parallel_state as ps

    ps.initialize_model_parallel(1)
    try:
        written = write(out)
        torch.save(written, os.path.join(out, "written.pt"))
        result = read_back(out, written)
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()
    with open(os.path.join(out, "check.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":  # megatron-core's writer starts worker processes that import this file
    main(sys.argv[1])
