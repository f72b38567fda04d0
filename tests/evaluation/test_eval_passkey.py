"""Passkey retrieval: prompt construction, the weights loader, and the tool end to end at CP=1 and CP=2."""

from __future__ import annotations

import json

import pytest
import torch
from eval_harness import TINY_MODEL, is_png, process_group, run_tool  # noqa: F401 (fixture)

from megatron_anchor.evaluation.passkey import (
    FILLER,
    INTRO,
    NEEDLE,
    QUESTION,
    build_prompt,
    extract_answer,
    make_key,
    run_passkey_grid,
)

# Large initial weights: a random model whose greedy output depends on the prompt, so that equal
# predictions under CP=1 and CP=2 say something.
MODEL = [*TINY_MODEL, "--init-method-std", "0.3", "--make-vocab-size-divisible-by", "64"]


@pytest.fixture(scope="module")
def tokenizer_model(tmp_path_factory) -> str:
    """A tiny SentencePiece model trained offline on the prompt's sentences; digits are single pieces."""
    from megatron_anchor.data import train_sentencepiece

    keys = [make_key(0, 100, 0, t, 5) for t in range(40)]
    texts = [INTRO, FILLER, QUESTION, *(NEEDLE.format(key=k) for k in keys)] * 10
    prefix = tmp_path_factory.mktemp("tokenizer") / "passkey"
    return train_sentencepiece(texts, str(prefix), 120, user_defined_symbols=[str(d) for d in range(10)])


@pytest.fixture(scope="module")
def tokenizer(tokenizer_model):
    from megatron_anchor.data import build_tokenizer

    return build_tokenizer("SentencePieceTokenizer", tokenizer_model)


@pytest.mark.parametrize("depth", [0.0, 0.3, 1.0])
def test_prompt_has_exact_length_and_needle_at_depth(tokenizer, depth):
    key = "40217"
    prompt = build_prompt(tokenizer.encode, 1, 300, depth, key)
    needle, intro, question = (tokenizer.encode(t) for t in (NEEDLE.format(key=key), INTRO, QUESTION))
    assert len(prompt.tokens) == 300 and prompt.tokens[0] == 1
    assert prompt.tokens[prompt.needle_start : prompt.needle_start + len(needle)] == needle
    assert prompt.tokens[1 : 1 + len(intro)] == intro and prompt.tokens[-len(question) :] == question
    filler = 300 - 1 - len(intro) - len(needle) - len(question)
    before = prompt.needle_start - 1 - len(intro)
    assert abs(before - depth * filler) <= len(tokenizer.encode(FILLER))  # nearest filler-sentence boundary
    if depth == 0.0:
        assert before == 0
    if depth == 1.0:
        assert prompt.needle_start + len(needle) == 300 - len(question)
    assert f"The pass key is {key}" in tokenizer.decode(prompt.tokens)


def test_prompt_too_short_is_refused(tokenizer):
    with pytest.raises(ValueError, match="too short"):
        build_prompt(tokenizer.encode, 1, 40, 0.5, "12345")


def test_answer_is_the_first_number_and_keys_are_reproducible():
    assert extract_answer(" 40217. Remember") == "40217"
    assert extract_answer("no digits") == ""
    assert make_key(3, 1024, 2, 0, 5) == make_key(3, 1024, 2, 0, 5) != make_key(3, 1024, 2, 1, 5)
    assert len(make_key(0, 64, 0, 0, 7)) == 7


class InductionOracle(torch.nn.Module):
    """A stand-in model that predicts, at the last position, the token that followed the longest earlier
    match of the sequence's suffix (an induction head): it copies the passkey when asked for it."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, tokens: torch.Tensor, labels, layout) -> torch.Tensor:
        logits = torch.zeros(*tokens.shape, self.vocab_size)  # [b, s, v]
        for row, seq in enumerate(tokens.tolist()):
            best, follower = 0, 0
            for end in range(len(seq) - 1):
                n = 0
                while n <= end and n < 32 and seq[end - n] == seq[len(seq) - 1 - n]:
                    n += 1
                if n > best:
                    best, follower = n, seq[end + 1]
            logits[row, -1, follower] = 1.0
        return logits


def test_grid_scores_a_model_that_copies_the_key(process_group, tokenizer):  # noqa: F811
    results = run_passkey_grid(InductionOracle(128), tokenizer, 1, [180, 240], [0.0, 0.5, 1.0], trials=2)
    assert results["accuracy"] == [[1.0] * 3] * 2 and results["overall"] == 1.0
    assert all(r["prediction"] == r["key"] for r in results["records"])
    assert len({r["key"] for r in results["records"]}) == 12  # every prompt has its own key


def _eval_args(tokenizer_model: str, extra: list[str]):
    from megatron_anchor.evaluation.eval_args import build_eval_parser, finish_model_args

    args = build_eval_parser("test").parse_args(
        [*MODEL, "--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer_model, *extra]
    )
    return finish_model_args(args, 512)


@pytest.fixture(scope="module")
def checkpoint_dir(process_group, tokenizer_model, tmp_path_factory):  # noqa: F811
    """A trainer-format checkpoint (model and AdamW state, model configuration recorded) of the tiny model."""
    from megatron_anchor.evaluation.loading import build_eval_model
    from megatron_anchor.model.config_record import config_record
    from megatron_anchor.training.build import build_model_config
    from megatron_anchor.training.checkpoint import save_checkpoint
    from megatron_anchor.training.vocab import resolve_vocab_size, tokenizer_vocab_size

    args = _eval_args(tokenizer_model, [])
    model = build_eval_model(args, process_group, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters())
    path = tmp_path_factory.mktemp("ckpt")
    cfg = build_model_config(args, resolve_vocab_size(args))
    record = config_record(cfg, vocab_size=tokenizer_vocab_size(args), make_vocab_size_divisible_by=64)
    save_checkpoint(str(path), 5, model, optimizer, process_group, {**record, "seq_length": 512})
    return path, {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def test_load_model_weights_restores_every_tensor(process_group, checkpoint_dir, tokenizer_model):  # noqa: F811
    from megatron_anchor.evaluation.loading import build_eval_model

    path, saved = checkpoint_dir
    args = _eval_args(tokenizer_model, ["--seed", "99", "--load", str(path)])  # another init, then loaded
    state = build_eval_model(args, process_group, torch.device("cpu")).state_dict()
    assert saved.keys() <= state.keys()
    for name, tensor in saved.items():
        assert torch.equal(state[name], tensor), name
    with pytest.raises(ValueError, match="missing does not exist"):
        _eval_args(tokenizer_model, ["--load", str(path / "missing")])


def test_passkey_tool_cp2_and_tp2_predict_as_cp1(checkpoint_dir, tokenizer_model, tmp_path):
    """CP=1 and CP=2 from the checkpoint; TP=2 from the same random initialisation (CPU initialisation
    draws the full weights at any TP size, and the vocabulary pads to 128 at TP 1 and 2 alike)."""
    path, _ = checkpoint_dir
    lengths, depths = [170, 203], [0.0, 0.5, 1.0]
    flags = [
        *MODEL,
        "--tokenizer-type",
        "SentencePieceTokenizer",
        "--tokenizer-model",
        tokenizer_model,
        "--lengths",
        "170,203",
        "--depths",
        "0,0.5,1",
        "--num-trials",
        "2",
        "--micro-batch-size",
        "2",
        "--max-new-tokens",
        "6",
    ]
    runs = {
        "cp1": ["--load", str(path)],
        "cp2": ["--load", str(path), "--context-parallel-size", "2"],
        "tp2": ["--tensor-model-parallel-size", "2"],
    }
    outs = {}
    for name, extra in runs.items():
        out = tmp_path / name
        proc = run_tool("eval_passkey.py", [*flags, *extra, "--out-dir", str(out)], nproc=1 + (name != "cp1"))
        assert "overall accuracy" in proc.stdout
        assert ("loaded model weights" in proc.stdout) == ("--load" in extra)
        assert is_png(out / "passkey_heatmap.png")
        outs[name] = json.loads((out / "passkey.json").read_text())
    one = outs["cp1"]
    assert one["lengths"] == lengths and one["depths"] == depths
    assert len(one["accuracy"]) == 2 and all(len(row) == 3 for row in one["accuracy"])
    assert len(one["records"]) == 2 * 3 * 2
    for i, length in enumerate(lengths):
        for j, depth in enumerate(depths):
            cell = [r["correct"] for r in one["records"] if r["length"] == length and r["depth"] == depth]
            assert one["accuracy"][i][j] == sum(cell) / 2
    assert len({tuple(r["generated_ids"]) for r in one["records"]}) > 1  # the output depends on the prompt
    for name in ("cp2", "tp2"):
        assert [(r["key"], r["generated_ids"], r["prediction"]) for r in outs[name]["records"]] == [
            (r["key"], r["generated_ids"], r["prediction"]) for r in one["records"]
        ], name
        assert outs[name]["accuracy"] == one["accuracy"]


def test_model_flags_left_out_come_from_the_checkpoint(checkpoint_dir, tokenizer_model):
    """The evaluation tools resolve model flags by the trainer's rule: omitted ones from the checkpoint,
    a contradicting shape flag refused by name, a new RoPE base reported."""
    from megatron_anchor.evaluation.eval_args import build_eval_parser, finish_model_args

    path, _ = checkpoint_dir
    tokenizer = ["--tokenizer-type", "SentencePieceTokenizer", "--tokenizer-model", tokenizer_model]

    def resolve(*extra: str):
        flags = [*tokenizer, "--load", str(path), *extra]
        return finish_model_args(build_eval_parser("test").parse_args(flags), 64)

    args = resolve()
    shape = (args.num_layers, args.hidden_size, args.num_attention_heads, args.num_query_groups)
    assert shape == (2, 64, 4, 2) and (args.ffn_hidden_size, args.init_method_std) == (128, 0.3)
    assert args.rotary_base == 10000.0 and args.attention_mode == "anchor"
    with pytest.raises(ValueError, match="--num-layers 1 contradicts checkpoint .* num_layers 2"):
        resolve("--num-layers", "1")
    notes = resolve("--rotary-base", "500000").checkpoint_notes
    assert any("--rotary-base 500000.0 replaces the checkpoint's 10000.0" in n for n in notes)


def test_converted_hf_model_generates_as_transformers(
    process_group,  # noqa: F811 (the fixture)
    tokenizer,
    tokenizer_model,
    tmp_path,
):
    """A tiny random Llama saved by transformers, converted, evaluated: the same greedy tokens as
    transformers' own ``generate`` on the same prompts."""
    import transformers

    from megatron_anchor.convert import import_hf_checkpoint, trainer_flags
    from megatron_anchor.evaluation.eval_args import build_eval_parser, finish_model_args
    from megatron_anchor.evaluation.loading import build_eval_model

    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        vocab_size=tokenizer.vocab_size,
        max_position_embeddings=512,
    )
    torch.manual_seed(0)
    hf_model = transformers.LlamaForCausalLM(config).float().eval()
    with torch.no_grad():  # O(1) weights: a greedy output that depends on the prompt
        for name, p in hf_model.named_parameters():
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    hf_model.save_pretrained(tmp_path / "hf")
    meta = import_hf_checkpoint(str(tmp_path / "hf"), str(tmp_path / "ckpt"), tp=1, progress=False)
    flags = [
        *trainer_flags(meta["model"], meta["rope"], 1),
        "--load",
        str(tmp_path / "ckpt"),
        "--tokenizer-type",
        "SentencePieceTokenizer",
        "--tokenizer-model",
        tokenizer_model,
    ]
    args = finish_model_args(build_eval_parser("test").parse_args(flags), 512)
    model = build_eval_model(args, process_group, torch.device("cpu"))
    results = run_passkey_grid(model, tokenizer, 1, [180, 230], [0.0, 1.0], trials=2, new_tokens=5)
    for record in results["records"]:
        prompt = build_prompt(tokenizer.encode, 1, record["length"], record["depth"], record["key"])
        with torch.no_grad():
            want = hf_model.generate(
                torch.tensor([prompt.tokens]), max_new_tokens=5, do_sample=False, pad_token_id=0
            )[0, len(prompt.tokens) :]
        assert record["generated_ids"] == want.tolist()
    assert len({tuple(r["generated_ids"]) for r in results["records"]}) > 1
