"""Set-up helpers of a run: model config, model, optimizer, datasets (each ``build_*`` does one thing)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from megatron_anchor.model import AnchorGPTConfig, AnchorGPTModel, build_anchor_gpt
from megatron_anchor.rope import rope_scaling_from_args
from megatron_anchor.training.batches import MockPackedDataset, check_sample_length
from megatron_anchor.training.metrics import dense_params_per_token
from megatron_anchor.training.parallel import ParallelDims
from megatron_anchor.training.vocab import tokenizer_from_args, tokenizer_vocab_size


def build_model_config(args: argparse.Namespace, padded_vocab_size: int) -> AnchorGPTConfig:
    """Model settings from the flags."""
    return AnchorGPTConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        ffn_hidden_size=args.ffn_hidden_size,
        num_attention_heads=args.num_attention_heads,
        num_query_groups=args.num_query_groups,
        vocab_size=padded_vocab_size,
        seq_length=args.seq_length,
        attention_mode=args.attention_mode,
        rotary_base=args.rotary_base,
        rotary_percent=args.rotary_percent,
        rotary_interleaved=args.rotary_interleaved,
        rope_scaling=rope_scaling_from_args(args),
        normalization=args.normalization,
        apply_layernorm_1p=args.apply_layernorm_1p,
        swiglu=args.swiglu,
        add_bias_linear=args.add_bias_linear,
        add_qkv_bias=args.add_qkv_bias,
        untie_embeddings=args.untie_embeddings_and_output_weights,
        hidden_dropout=args.hidden_dropout,
        init_method_std=args.init_method_std,
        norm_epsilon=args.norm_epsilon,
        recompute_attention=args.recompute_granularity == "selective",
        use_te={"local": False, "transformer_engine": True}.get(getattr(args, "transformer_impl", None)),
        sequence_parallel=getattr(args, "sequence_parallel", False),  # the evaluation tools have no such flag
        cp_comm_type=getattr(args, "cp_comm_type", "p2p"),
        loss_chunk_tokens=getattr(args, "cross_entropy_chunk_size", 0),
    )


def build_model(cfg: AnchorGPTConfig, dims: ParallelDims, device: torch.device, seed: int) -> AnchorGPTModel:
    """The model on this rank, initialised identically on every DP/CP replica."""
    torch.manual_seed(seed)
    if device.type == "cuda":
        from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

        model_parallel_cuda_manual_seed(seed)  # GPU initialisation draws from megatron's RNG tracker
    return build_anchor_gpt(cfg, tp_size=dims.tp, cp_size=dims.cp).to(device)


def embedding_and_output_names(model: torch.nn.Module) -> set[str]:
    """Names of the input embedding and output layer weights (megatron-core tags them
    ``is_embedding_or_output_parameter``): the parameters of Megatron's ``--decoupled-lr``."""
    return {n for n, p in model.named_parameters() if getattr(p, "is_embedding_or_output_parameter", False)}


def build_optimizer(
    model: torch.nn.Module, args: argparse.Namespace, decoupled_names: set[str] = frozenset()
) -> torch.optim.Optimizer:
    """AdamW; no weight decay on 1-D parameters (norm weights, biases), as Megatron does. With
    ``--decoupled-lr`` the parameters named in ``decoupled_names`` (``embedding_and_output_names`` of the
    unwrapped model) form groups marked ``decoupled``, whose LR follows --decoupled-lr/--decoupled-min-lr."""
    from megatron_anchor.training.parallel import unwrapped_name

    decoupled = args.decoupled_lr is not None
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            key = (p.dim() >= 2, decoupled and unwrapped_name(name) in decoupled_names)
            groups.setdefault(key, []).append(p)
    param_groups = [
        {"params": groups.get((decay, dec), []), "weight_decay": args.weight_decay if decay else 0.0,
         "decoupled": dec}
        for decay, dec in ((True, False), (False, False), (True, True), (False, True))
        if (decay, dec) in groups or not dec  # the two plain groups always (a checkpoint's layout)
    ]  # fmt: skip
    return torch.optim.AdamW(
        param_groups, lr=args.lr, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_eps
    )


def group_lr(args: argparse.Namespace, group: dict, step: int) -> float:
    """The LR of optimizer ``group`` at ``step``: the schedule of --lr/--min-lr, or of --decoupled-lr /
    --decoupled-min-lr (default --min-lr) for the embedding and output layer's groups."""
    from megatron_anchor.training.schedule import get_lr

    peak, low = args.lr, args.min_lr
    if group.get("decoupled"):
        peak = args.decoupled_lr
        low = args.min_lr if args.decoupled_min_lr is None else args.decoupled_min_lr
    return get_lr(
        step,
        lr=peak,
        min_lr=low,
        warmup_iters=args.lr_warmup_iters,
        decay_iters=args.lr_decay_iters,
        decay_style=args.lr_decay_style,
    )


@dataclass
class Datasets:
    """Train and validation splits (items: tokens/labels/loss_mask/doc_ids/position_ids, each ``[S]``)."""

    train: Dataset
    valid: Dataset | None


def build_datasets(args: argparse.Namespace, padded_vocab_size: int) -> Datasets:
    """The datasets named by ``--data-path``, packed or Megatron-LM plain (or synthetic: ``--mock-data``)."""
    n_train = args.train_iters * args.global_batch_size
    n_valid = args.eval_iters * args.global_batch_size
    if args.mock_data:
        vocab = args.vocab_size or padded_vocab_size
        train = MockPackedDataset(args.seq_length, vocab, n_train, args.seed, args.position_ids)
        valid = MockPackedDataset(args.seq_length, vocab, n_valid, args.seed + 1, args.position_ids)
    else:
        train, valid = _data_path_datasets(args, n_train, n_valid)
    check_sample_length(train, args.seq_length, "train")
    if valid is not None and len(valid) > 0:
        check_sample_length(valid, args.seq_length, "valid")
    else:
        valid = None
    return Datasets(train=train, valid=valid)


def _data_path_datasets(
    args: argparse.Namespace, n_train: int, n_valid: int
) -> tuple[Dataset, Dataset | None]:
    """``--data-path``'s train and validation splits; every sample's token ids are checked against the
    model's vocabulary (``tokenizer_vocab_size``), plain files get the tokenizer's anchor and EOD."""
    from megatron_anchor.data import AnchorTokens, DataError, build_train_valid_test_datasets

    tokenizer = tokenizer_from_args(args) if args.tokenizer_model else None
    train, valid, _ = build_train_valid_test_datasets(
        data_path=args.data_path,
        split=args.split,
        seq_length=args.seq_length,
        seed=args.seed,
        num_samples=[n_train, n_valid, 0],
        position_ids=args.position_ids,
        mask_cross_doc_labels=args.mask_cross_doc_labels,
        path_to_cache=args.data_cache_path,
        tokens=AnchorTokens.of(tokenizer) if tokenizer else None,
        vocab_size=tokenizer_vocab_size(args),
        shuffle=args.data_shuffle,
    )
    if train is None:
        raise DataError(
            f"--split {args.split} gives the train split of --data-path {' '.join(args.data_path)} no "
            "samples: too few documents for its share"
        )
    return train, valid


def model_dense_params(cfg: AnchorGPTConfig) -> int:
    """Matmul parameters per token of the whole (unsharded) model, for FLOP counts."""
    return dense_params_per_token(
        cfg.num_layers,
        cfg.hidden_size,
        cfg.ffn_hidden_size,
        cfg.num_attention_heads,
        cfg.num_query_groups or cfg.num_attention_heads,
        cfg.vocab_size,
    )
