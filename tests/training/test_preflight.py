"""Pre-flight checks: tokenizer, data files and their sample length, output paths, optional packages; a
training run stops on them before any process group or model exists."""

from __future__ import annotations

import importlib.util

import pytest
import torch.distributed as dist
from packed_data import write_hf_tokenizer, write_packed

from megatron_anchor.pretrain import main
from megatron_anchor.training import build_parser, validate_args
from megatron_anchor.training.preflight import preflight

TINY = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --train-iters 2"


def _findings(extra: list[str], dry_run: bool = True):
    args = validate_args(build_parser().parse_args([*TINY.split(), *extra]), 1)
    return preflight(args, dry_run=dry_run)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    work = tmp_path_factory.mktemp("preflight")
    return {
        "work": work,
        "data32": write_packed(work / "s32_text_document", seq_length=32, samples=6),
        "data16": write_packed(work / "s16_text_document", seq_length=16, samples=6),
        "tokenizer": write_hf_tokenizer(work / "tok", vocab=50),
    }


def test_data_prefixes_are_opened_and_their_sample_length_checked(inputs):
    work = inputs["work"]
    (work / "only_bin.bin").write_bytes(b"")
    found = _findings(
        [
            "--vocab-size",
            "50",
            "--data-path",
            "0.5",
            inputs["data32"],
            "0.3",
            inputs["data16"],
            "0.2",
            str(work / "only_bin"),
            "--split",
            "1,0,0",
        ]
    )
    assert found.notes[0] == f"data {inputs['data32']}: packed-anchor samples, 6 of 33 tokens"
    assert f"--data-path {work}/only_bin: no file {work}/only_bin.idx" in found.errors
    assert any(
        "s16_text_document.idx: sample 0 has 17 tokens but seq_length 32 needs 33" in e for e in found.errors
    )
    missing = _findings(["--vocab-size", "50", "--data-path", str(work / "nowhere")])
    assert missing.errors == [f"--data-path {work}/nowhere: no file {work}/nowhere.bin"]


def test_tokenizer_loads_and_must_fit_the_vocabulary(inputs):
    data = ["--data-path", inputs["data32"]]
    hf = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", inputs["tokenizer"]]
    assert _findings([*data, *hf]).errors == []
    small = _findings([*data, *hf, "--vocab-size", "40"])
    assert small.errors == [
        f"--vocab-size 40 is smaller than the 50 ids of --tokenizer-model {inputs['tokenizer']}"
    ]
    spm = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", inputs["tokenizer"]]
    with pytest.raises(ValueError, match="no SentencePiece model file"):  # a directory, not a .model
        _findings([*data, *spm])


def _gathered(flags: list[str]):
    """The one report of a command line: its flag checks, then preflight's."""
    from megatron_anchor.training.arguments import gather_configuration

    args, report = gather_configuration(flags, 1)
    return preflight(args, dry_run=True, report=report)


def test_a_bad_split_is_reported_once(inputs):
    found = _gathered([*TINY.split(), "--vocab-size", "128", "--data-path", inputs["data32"], "--split", "x"])
    assert len(found.errors) == 1, found.errors  # not also the split sizes of the data plan ("float NaN")
    assert found.errors[0].startswith("--split x: expected up to three")


def test_a_tokenizer_larger_than_a_checkpoints_vocabulary_is_one_error(tmp_path):
    from megatron_recipes import _converted_metadata, _sentencepiece_words

    config = {"architectures": ["LlamaForCausalLM"], "hidden_size": 64, "intermediate_size": 96,
              "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "vocab_size": 100,
              "rms_norm_eps": 1e-6, "rope_theta": 5e5, "max_position_embeddings": 64,
              "tie_word_embeddings": False}  # fmt: skip
    ckpt = _converted_metadata(tmp_path / "ckpt", config, 1)
    sp = _sentencepiece_words(tmp_path / "sp", 300)
    found = _gathered(["--seq-length", "64", "--train-iters", "2", "--mock-data", "--load", ckpt,
                       "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", sp])  # fmt: skip
    assert len(found.errors) == 1, found.errors  # not also "--vocab-size 100", a flag the user never gave
    assert found.errors[0].startswith(f"--tokenizer-model {sp} (300 ids) does not fit")


def test_a_plain_dataset_needs_a_tokenizer_with_an_anchor(tmp_path):
    import numpy as np
    from packed_data import write_plain

    from megatron_anchor.data import AnchorTokens, build_tokenizer

    plain = write_plain(tmp_path / "plain", [np.arange(3, 40)] * 4)
    tokenizer = write_hf_tokenizer(tmp_path / "tok", vocab=50, bos_eos=False)
    found = _findings(["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", tokenizer,
                       "--data-path", plain, "--data-cache-path", str(tmp_path / "cache")])  # fmt: skip
    assert found.errors == [
        f"--data-path {plain}: --tokenizer-model {tokenizer}: the tokenizer has neither a BOS nor an EOS "
        "token to be the anchor: a Megatron-LM plain dataset cannot be read with it; preprocess the data "
        "packed (tools/preprocess_data.py --seq-length with --anchor-token-id)"
    ]
    with pytest.raises(ValueError, match="neither a BOS nor an EOS"):  # the datasets' own rule
        AnchorTokens.of(build_tokenizer("HuggingFaceTokenizer", tokenizer))


def test_output_paths_must_be_creatable(inputs, tmp_path):
    base = ["--mock-data", "--vocab-size", "50"]
    (tmp_path / "a_file").write_text("x")
    assert _findings([*base, "--log-jsonl", str(tmp_path / "new" / "deeper" / "log.jsonl")]).errors == []
    blocked = _findings([*base, "--log-jsonl", str(tmp_path / "a_file" / "log.jsonl")])
    assert blocked.errors == [
        f"--log-jsonl {tmp_path}/a_file/log.jsonl: {tmp_path}/a_file is a file, not a directory"
    ]
    assert _findings([*base, "--log-jsonl", str(tmp_path)]).errors == [
        f"--log-jsonl {tmp_path} is a directory"
    ]
    # --save is probed by the flag checks themselves (the checkpoint contract), before any pre-flight.
    with pytest.raises(ValueError, match=r"--save .*/a_file/ckpt: .*/a_file is a file, not a directory"):
        _findings([*base, "--save", str(tmp_path / "a_file" / "ckpt")])
    wandb = _findings([*base, "--wandb-save-dir", str(tmp_path / "a_file" / "wandb"), "--wandb-project", "p"])
    assert any(e.startswith(f"--wandb-save-dir {tmp_path}/a_file/wandb") for e in wandb.errors)


def test_missing_logging_packages_warn_in_a_dry_run_and_stop_a_run(monkeypatch, tmp_path):
    real_find_spec = importlib.util.find_spec
    absent = {"tensorboard", "wandb"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in absent else real_find_spec(name, *a)
    )
    flags = ["--mock-data", "--vocab-size", "50", "--tensorboard-dir", str(tmp_path / "tb")]
    flags += ["--wandb-project", "p", "--wandb-save-dir", str(tmp_path / "wb")]
    dry = _findings(flags, dry_run=True)
    assert dry.errors == [] and len(dry.warnings) == 2
    assert dry.warnings[0].startswith("--tensorboard-dir needs the tensorboard package")
    assert "the training nodes must have it" in dry.warnings[1]
    run = _findings(flags, dry_run=False)
    assert run.warnings == [] and [e.split(" needs ")[0] for e in run.errors] == [
        "--tensorboard-dir",
        "--wandb-project",
    ]


def test_a_missing_data_file_exits_2_as_a_command_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "1")
    missing = tmp_path / "gone_text_document"
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY.split(), "--vocab-size", "50", "--data-path", str(missing)])
    assert exit_info.value.code == 2 and not dist.is_initialized()  # as for a missing --load
    assert capsys.readouterr().err == f"error: --data-path {missing}: no file {missing}.bin\n"


def test_a_run_stops_on_a_blocked_log_path_before_any_process_group(tmp_path, monkeypatch, capsys):
    (tmp_path / "a_file").write_text("x")
    monkeypatch.setenv("WORLD_SIZE", "1")
    argv = [
        *TINY.split(),
        "--mock-data",
        "--vocab-size",
        "50",
        "--log-jsonl",
        str(tmp_path / "a_file" / "l.jsonl"),
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 1 and not dist.is_initialized()
    err = capsys.readouterr().err
    assert (
        err.strip()
        == f"error: --log-jsonl {tmp_path}/a_file/l.jsonl: {tmp_path}/a_file is a file, not a directory"
    )


def test_the_model_vocabulary_follows_vocab_size_over_the_tokenizer(inputs):
    """A checkpoint's embedding may be larger than its tokenizer (Qwen2's is): --vocab-size decides."""
    from megatron_anchor.training.build import build_model_config
    from megatron_anchor.training.vocab import resolve_vocab_size

    hf = ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model", inputs["tokenizer"], "--mock-data"]
    parse = lambda extra: validate_args(build_parser().parse_args([*TINY.split(), *hf, *extra]), 1)  # noqa: E731
    assert resolve_vocab_size(parse(["--make-vocab-size-divisible-by", "8"])) == 56  # the tokenizer's 50
    assert resolve_vocab_size(parse(["--vocab-size", "60", "--make-vocab-size-divisible-by", "8"])) == 64
    use_te = [build_model_config(parse(impl), 64).use_te for impl in ([], ["--transformer-impl", "local"])]
    assert use_te == [None, False]  # default: TE's layers when TE imports; local: never
    assert build_model_config(parse(["--transformer-impl", "transformer_engine"]), 64).use_te is True
