"""Megatron's meanings carried over: --use-rope-scaling (megatron-core's Llama 3.1 scaling), Llama2Tokenizer
and GPT-2 BPE files, --padded-vocab-size; a converted checkpoint's architecture taken, its causal attention
not (a training choice); old checkpoints keep the architecture they were built with."""

from __future__ import annotations

import json

import pytest
import torch
from megatron_recipes import _converted_metadata, _sentencepiece_words, gpt2_bpe_files

from megatron_anchor.training import build_parser, validate_args
from megatron_anchor.training.vocab import resolve_vocab_size, tokenizer_vocab_size

TINY = "--num-layers 2 --hidden-size 512 --num-attention-heads 4 --seq-length 64 --mock-data --train-iters 2"
# A tiny Llama (no weights needed: the flag checks read only meta.json), converted at TP 1.
LLAMA = {
    "architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
    "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 100,
    "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "max_position_embeddings": 64, "tie_word_embeddings": False,
}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def training_stack():
    """megatron-core imported as a run imports it (without wandb, which it would pull in for seconds)."""
    from megatron_anchor.training.startup import import_training_stack

    import_training_stack(uses_wandb=False)


LEAVE = "leave the flag out to use the checkpoint's value"


def _validate(flags: str, *extra: str):
    return validate_args(build_parser().parse_args([*flags.split(), *extra]), 1)


def test_use_rope_scaling_is_megatron_cores_llama3_scaling():
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    from megatron_anchor.rope import compute_inv_freq, rope_scaling_from_args

    args = _validate(TINY, "--vocab-size", "99", "--rotary-base", "500000", "--use-rope-scaling",
                     "--rope-scaling-factor", "16")  # fmt: skip
    ours, mscale = compute_inv_freq(args.rotary_base, 128, rope_scaling_from_args(args))
    base = 1.0 / (500000.0 ** (torch.arange(0, 128, 2, dtype=torch.float64) / 128))
    theirs = RotaryEmbedding._apply_scaling(None, base, factor=16)  # low 1, high 4, original 8192
    assert mscale == 1.0 and torch.allclose(ours, theirs, rtol=1e-12, atol=0)
    assert not torch.allclose(ours, base)  # the scaling changes the low frequencies
    with pytest.raises(ValueError, match="give either --use-rope-scaling or --rope-scaling"):
        _validate(
            TINY,
            "--vocab-size",
            "99",
            "--use-rope-scaling",
            "--rope-scaling",
            '{"rope_type": "linear", "factor": 2}',
        )


def test_llama2_tokenizer_and_gpt2_bpe_files_are_read_as_megatron_does(tmp_path):
    import sentencepiece

    model = _sentencepiece_words(tmp_path / "sp", 300)
    args = _validate(TINY, "--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", model)
    assert args.tokenizer_type == "SentencePieceTokenizer"  # Megatron's Llama2Tokenizer: the same .model
    pieces = sentencepiece.SentencePieceProcessor(model_file=model).get_piece_size()
    assert tokenizer_vocab_size(args) == pieces == 300 and resolve_vocab_size(args) == 384
    vocab, merges = gpt2_bpe_files(tmp_path / "gpt2", size=400)
    args = _validate(
        TINY, "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges
    )
    assert tokenizer_vocab_size(args) == len(json.loads(open(vocab).read())) == 400
    from megatron_anchor.data import build_tokenizer

    tokenizer = build_tokenizer("GPT2BPETokenizer", vocab, merges)
    ids = json.loads(open(vocab).read())
    assert tokenizer.encode("ab") == [ids["a"], ids["b"]] and tokenizer.eos_id == ids["<|endoftext|>"]
    with pytest.raises(ValueError, match="GPT2BPETokenizer takes --vocab-file and --merge-file"):
        _validate(TINY, "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab)


def test_gpt2_bpe_files_build_the_data_and_the_record_holds_both_files(tmp_path):
    import numpy as np
    from packed_data import write_plain

    from megatron_anchor.training.arguments import gather_configuration
    from megatron_anchor.training.build import _data_path_datasets

    vocab, merges = gpt2_bpe_files(tmp_path / "gpt2", size=400)
    rng = np.random.default_rng(0)
    prefix = write_plain(tmp_path / "p", [np.r_[rng.integers(0, 399, 50), 399] for _ in range(40)])
    flags = [*TINY.replace("--mock-data", "").split(), "--tokenizer-type", "GPT2BPETokenizer",
             "--vocab-file", vocab, "--merge-file", merges, "--data-path", prefix,
             "--data-cache-path", str(tmp_path / "cache")]  # fmt: skip
    args, report = gather_configuration(flags, 1)
    assert report.errors == []
    assert len(_data_path_datasets(args, 4, 0)[0]) == 40 * 51 // 64  # Megatron's plain sample index
    from megatron_anchor.training.vocab import tokenizer_record

    record = tokenizer_record(args, 400)
    assert record["crc32"].startswith("vocab.json:") and ",merges.txt:" in record["crc32"]
    assert record["merge_file"] == merges


def test_padded_vocab_size_is_the_models_rows_as_given():
    args = _validate(TINY, "--vocab-size", "99", "--padded-vocab-size", "100")
    assert resolve_vocab_size(args) == 100  # not padded to 128
    with pytest.raises(
        ValueError, match="--padded-vocab-size 101 must divide by --tensor-model-parallel-size 2"
    ):
        validate_args(build_parser().parse_args([*TINY.split(), "--vocab-size", "99", "--padded-vocab-size",
                                                 "101", "--tensor-model-parallel-size", "2"]), 2)  # fmt: skip


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> str:
    return _converted_metadata(tmp_path_factory.mktemp("llama") / "ckpt", LLAMA, 1)


def test_a_converted_checkpoint_gives_its_architecture_but_not_its_attention_mode(converted):
    args = _validate(
        TINY.replace("--num-layers 2 --hidden-size 512 --num-attention-heads 4", ""), "--load", converted
    )
    assert (args.normalization, args.swiglu, args.add_bias_linear) == ("RMSNorm", True, False)
    assert (args.untie_embeddings_and_output_weights, args.hidden_dropout, args.ffn_hidden_size) == (
        True,
        0.0,
        96,
    )
    assert args.attention_mode == "anchor" and args.position_ids == "global"
    (taken, mode) = args.checkpoint_notes
    assert "--normalization RMSNorm --swiglu --disable-bias-linear" in taken
    assert mode == (
        f"--attention-mode anchor (the default) trains this run; checkpoint {converted}/iter_0000000 was "
        "trained with causal"
    )
    flags = TINY.replace("--num-layers 2 --hidden-size 512", "--hidden-size 64")
    asked = _validate(flags, "--load", converted, "--attention-mode", "causal", "--swiglu")
    assert asked.attention_mode == "causal" and len(asked.checkpoint_notes) == 1  # agrees: nothing to say
    with pytest.raises(ValueError) as err:  # every conflict at once; --disable-bias-linear agrees
        _validate(TINY, "--load", converted, "--normalization", "LayerNorm", "--disable-bias-linear")
    where = f"contradicts checkpoint {converted}/iter_0000000, which has"
    assert err.value.errors == [
        f"--hidden-size 512 {where} hidden_size 64: {LEAVE}",
        f"--normalization LayerNorm {where} normalization RMSNorm: {LEAVE}",
    ]


def test_an_old_checkpoint_keeps_the_architecture_it_was_built_with(converted, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(converted, old)
    meta_file = old / "iter_0000000" / "meta.json"
    meta = json.loads(meta_file.read_text())
    for key in ("normalization", "apply_layernorm_1p", "swiglu", "add_bias_linear", "hidden_dropout"):
        del meta["model"][key]  # a checkpoint written before they were recorded
    meta_file.write_text(json.dumps(meta))
    args = _validate(
        TINY.replace("--num-layers 2 --hidden-size 512 --num-attention-heads 4", ""), "--load", str(old)
    )
    assert (args.normalization, args.swiglu, args.add_bias_linear, args.hidden_dropout) == (
        "RMSNorm",
        True,
        False,
        0.0,
    )


def test_the_trainers_record_holds_the_architecture_and_export_refuses_another():
    from megatron_anchor.convert.hf_config import architecture_flags, export_hf_config
    from megatron_anchor.model.config_record import config_record
    from megatron_anchor.training.build import build_model_config

    args = _validate(TINY, "--vocab-size", "99", "--apply-layernorm-1p", "--hidden-dropout", "0.2")
    record = config_record(build_model_config(args, 128), vocab_size=99, make_vocab_size_divisible_by=128,
                           position_ids=args.position_ids)  # fmt: skip
    model = record["model"]
    keys = ("normalization", "apply_layernorm_1p", "swiglu", "add_bias_linear",
            "untie_embeddings_and_output_weights", "hidden_dropout", "position_ids")  # fmt: skip
    assert {k: model[k] for k in keys} == {
        "normalization": "LayerNorm", "apply_layernorm_1p": True, "swiglu": False, "add_bias_linear": True,
        "untie_embeddings_and_output_weights": False, "hidden_dropout": 0.2, "position_ids": "global",
    }  # fmt: skip
    assert architecture_flags(model) == [
        "--normalization",
        "LayerNorm",
        "--apply-layernorm-1p",
        "--hidden-dropout",
        0.2,
    ]
    with pytest.raises(ValueError, match="not a Llama-family model: normalization LayerNorm .*swiglu False"):
        export_hf_config(model, record["rope"], None, 64, "float32")


def test_a_checkpoint_saved_without_optimizer_resumes_only_without_it(converted, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(converted, run)
    meta_file = run / "iter_0000000" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "weights_only": False, "optimizer_saved": False}))
    flags = TINY.replace("--num-layers 2 --hidden-size 512 --num-attention-heads 4", "")
    with pytest.raises(ValueError, match="holds no optimizer state .*: add --no-load-optim"):
        _validate(flags, "--load", str(run))
    assert _validate(flags, "--load", str(run), "--no-load-optim").load_checkpoint == str(
        run / "iter_0000000"
    )


def test_no_save_optim_writes_the_model_alone(tmp_path):
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from megatron.core import parallel_state as ps

    from megatron_anchor.checkpoint import CheckpointError, checkpoint_meta, read_meta
    from megatron_anchor.model import AnchorGPTConfig, build_anchor_gpt
    from megatron_anchor.model.config_record import config_record
    from megatron_anchor.parallel import free_port
    from megatron_anchor.training.checkpoint import load_checkpoint, save_checkpoint
    from megatron_anchor.training.parallel import ParallelDims

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    ps.initialize_model_parallel(1, 1)
    try:
        cfg = AnchorGPTConfig(num_layers=1, hidden_size=32, ffn_hidden_size=64, num_attention_heads=4,
                              vocab_size=64, seq_length=16)  # fmt: skip
        model = build_anchor_gpt(cfg)
        optimizer = torch.optim.AdamW(model.parameters())
        record = config_record(cfg, vocab_size=64, make_vocab_size_divisible_by=64)
        sizes = {"tp": 1, "cp": 1, "dp": 1, "world": 1}
        meta = checkpoint_meta(step=0, consumed_samples=0, record=record, tokenizer=None, schedule=None,
                               sizes=sizes, weights_only=False)  # fmt: skip
        dims = ParallelDims(tp=1, cp=1, dp=1, rank=0, tp_rank=0, cp_rank=0, dp_rank=0)
        path = save_checkpoint(str(tmp_path), 1, model, None, dims, meta)  # --no-save-optim: no optimizer
        assert read_meta(path)["optimizer_saved"] is False
        saved = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
        assert saved and not any(".optim." in key for key in saved)
        with pytest.raises(CheckpointError, match="holds no optimizer state .*: add --no-load-optim"):
            load_checkpoint(path, model, optimizer, dims)
        assert load_checkpoint(path, model, optimizer, dims, load_optim=False)["step"] == 1
    finally:
        ps.destroy_model_parallel()
        dist.destroy_process_group()
