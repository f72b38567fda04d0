"""Tiny random transformers models saved offline, and megatron_anchor logits from a converted checkpoint."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

SEQ, BATCH = 24, 2
TOKENIZER_FILES = {"tokenizer.json": '{"fake": true}', "tokenizer_config.json": "{}"}

_COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=100,
    max_position_embeddings=64,
)
# One model per family, each with a different RoPE and norm setting so that each carries over.
FAMILIES = {
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            _COMMON,
            rms_norm_eps=1e-5,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            _COMMON,
            rms_norm_eps=1e-6,
            rope_theta=1e6,
            tie_word_embeddings=True,
        ),
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(
            _COMMON,
            rms_norm_eps=1e-6,
            rope_theta=10000.0,
            sliding_window=None,
        ),
    ),
}


def save_tiny_hf(family: str, out: Path, max_shard_size: str | None = None) -> Path:
    """Build a random fp32 model of ``family`` from a config (no hub), save it with tokenizer stand-ins."""
    import transformers

    config_cls, model_cls, kwargs = FAMILIES[family]
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(hash(family) % 1000)
    model = getattr(transformers, model_cls)(config).float()
    with torch.no_grad():  # O(1) weights and non-trivial norms, so that every tensor moves the logits
        for name, p in model.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    extra = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **extra)
    for name, text in TOKENIZER_FILES.items():
        (out / name).write_text(text)
    return out


def sample_tokens(vocab: int = 100) -> torch.Tensor:
    """The ``[b, s]`` token batch every parity check uses."""
    return torch.randint(0, vocab, (BATCH, SEQ), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def hf_logits(hf_dir: Path, tokens: torch.Tensor) -> torch.Tensor:
    """transformers' fp32 logits ``[b, s, vocab]``."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    return model(tokens).logits


@torch.no_grad()
def megatron_logits(ckpt: str, tp: int, tokens: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits ``[b, s, vocab]`` of the converted checkpoint (parallel_state set for ``tp``).

    The model is built from the trainer flags the converter prints, through the trainer's own parser,
    with attention_mode "causal", one document per sample and global positions.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from megatron_anchor.checkpoint import load_model_weights, resolve_checkpoint
    from megatron_anchor.convert import trainer_flags
    from megatron_anchor.model import AnchorLayout
    from megatron_anchor.training import build_parser, validate_args
    from megatron_anchor.training.build import build_model, build_model_config
    from megatron_anchor.training.parallel import ParallelDims
    from megatron_anchor.training.vocab import resolve_vocab_size

    meta = json.loads((Path(resolve_checkpoint(ckpt)) / "meta.json").read_text())
    flags = trainer_flags(meta["model"], meta["rope"], tp) + [
        "--attention-mode",
        "causal",
        "--seq-length",
        str(SEQ),
        "--train-iters",
        "1",
        "--mock-data",
    ]
    args = validate_args(build_parser().parse_args(flags), world_size=tp)
    cfg = build_model_config(args, resolve_vocab_size(args))
    dims = ParallelDims(
        tp=tp,
        cp=1,
        dp=1,
        rank=ps.get_tensor_model_parallel_rank(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        cp_rank=0,
        dp_rank=0,
    )
    model = build_model(cfg, dims, torch.device("cpu"), seed=0).eval()
    load_model_weights(ckpt, model, dims.tp_rank)
    b, s = tokens.shape
    layout = AnchorLayout(doc_ids=torch.zeros(b, s, dtype=torch.long), positions=torch.arange(s).expand(b, s))
    local = model(tokens, None, layout)  # [b, s, v_pad / tp]
    # megatron-core's gather_from_tensor_model_parallel_region allocates on CUDA: gather with torch.
    parts = [torch.empty_like(local) for _ in range(tp)]
    dist.all_gather(parts, local.contiguous(), group=ps.get_tensor_model_parallel_group())
    full = torch.cat(parts, dim=-1)  # [b, s, v_pad]
    return full[..., : meta["model"]["vocab_size"]]


def logits_worker(rank: int, world: int, port: int, ckpts: dict[str, dict[int, str]], out: str) -> None:
    """Spawned process: for TP 1 then 2, every family's logits; rank 0 saves ``{(family, tp): logits}``."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    try:
        for tp in (1, 2):
            ps.initialize_model_parallel(tensor_model_parallel_size=tp)
            for family, by_tp in ckpts.items():
                results[(family, tp)] = megatron_logits(by_tp[tp], tp, sample_tokens())
            ps.destroy_model_parallel()
    finally:
        dist.destroy_process_group()
    if rank == 0:
        torch.save(results, out)
