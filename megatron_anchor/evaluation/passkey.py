"""Passkey retrieval: a number hidden at a chosen depth in filler text, the model asked to repeat it.

The prompt (the anchor token, an instruction, filler with the needle sentence inside, the question) has
exactly the requested number of tokens. Decoding is greedy, recomputing the whole forward per new token.
Under context parallelism every rank holds its share of the (padded) sequence in the CP layout, and the
logits of the last real token are summed from the rank that holds it, so every rank picks the same token.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from megatron_anchor.data import slice_batch_for_cp
from megatron_anchor.evaluation.loading import gather_vocab
from megatron_anchor.model import AnchorCoreAttention, AnchorLayout
from megatron_anchor.parallel.cp_layout import batch_cp_index
from megatron_anchor.parallel.layout_names import required_multiple

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
    "I will quiz you about the important information there."
)
FILLER = " The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = " The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = " What is the pass key? The pass key is"


@dataclass
class PasskeyPrompt:
    """One prompt of exactly ``len(tokens)`` tokens with ``key`` in the needle at ``needle_start``."""

    tokens: list[int]
    key: str
    depth: float
    needle_start: int


def make_key(seed: int, length: int, depth_index: int, trial: int, digits: int) -> str:
    """A ``digits``-digit passkey fixed by (seed, length, depth, trial): the same under any parallelism."""
    gen = torch.Generator().manual_seed(((seed * 1_000_003 + length) * 1009 + depth_index) * 1009 + trial)
    return str(int(torch.randint(10 ** (digits - 1), 10**digits, (1,), generator=gen)))


def build_prompt(
    encode: Callable[[str], list[int]], anchor_id: int, length: int, depth: float, key: str
) -> PasskeyPrompt:
    """The anchor, the instruction, filler up to ``length`` tokens with the needle at ``depth`` in [0, 1]."""
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"passkey depth {depth} must lie in [0, 1]")
    intro, needle, question = encode(INTRO), encode(NEEDLE.format(key=key)), encode(QUESTION)
    unit = encode(FILLER)
    n_filler = length - 1 - len(intro) - len(needle) - len(question)
    if n_filler < 0:
        raise ValueError(f"passkey length {length} is too short: the prompt alone needs {length - n_filler}")
    filler = (unit * (n_filler // len(unit) + 1))[:n_filler]
    # The needle goes between whole filler sentences, at the unit boundary nearest to the depth.
    before = min(n_filler, round(depth * n_filler / len(unit)) * len(unit))
    head = [anchor_id, *intro, *filler[:before]]
    tokens = head + needle + filler[before:] + question
    return PasskeyPrompt(tokens=tokens, key=key, depth=depth, needle_start=len(head))


def extract_answer(text: str) -> str:
    """The first run of digits in the generated text ('' when there is none)."""
    match = re.search(r"\d+", text)
    return match.group(0) if match else ""


def _attention_mode(model) -> str:
    """The visibility rule the model's attention layers apply (the balanced layout balances its work)."""
    return next(m.setup.mode for m in model.modules() if isinstance(m, AnchorCoreAttention))


def last_token_logits(
    model,
    tokens: torch.Tensor,
    cp_group: dist.ProcessGroup | None = None,
    pad_id: int = 0,
    cp_layout: str = "balanced",
) -> torch.Tensor:
    """fp32 full-vocabulary logits ``[b, v]`` of the last of ``tokens [b, n]`` (the whole sequence, on
    every CP rank); the model sees this rank's share of it in ``cp_layout`` (padded as the layout needs)."""
    cp = dist.get_world_size(cp_group) if cp_group is not None else 1
    rank = dist.get_rank(cp_group) if cp_group is not None else 0
    b, n = tokens.shape
    multiple = required_multiple(cp_layout, cp)
    seq = -(-n // multiple) * multiple
    # Padding goes after the last real token: under causal attention it cannot change that token's logits.
    padded = F.pad(tokens, (0, seq - n), value=pad_id).cpu()  # [b, S]
    doc_ids = torch.ones_like(padded)
    doc_ids[:, 0] = 0  # the anchor, then the prompt as one document
    positions = torch.arange(seq).expand(b, seq)
    cp_index = batch_cp_index(doc_ids, cp, cp_layout, _attention_mode(model)) if cp > 1 else None
    local = slice_batch_for_cp({"tokens": padded, "positions": positions}, cp, rank, cp_index)
    layout = AnchorLayout(doc_ids=doc_ids, positions=local["positions"].to(tokens.device), cp_index=cp_index)
    logits = model(local["tokens"].to(tokens.device), None, layout)  # [b, S/cp, v/tp]
    held = local["positions"][0] == n - 1  # [S/cp]: where this rank holds the last real token, if it does
    out = torch.zeros(b, logits.shape[-1], dtype=torch.float32, device=tokens.device)  # [b, v/tp]
    if bool(held.any()):
        out = logits[:, int(held.nonzero()[0])].float().contiguous()  # collectives need a contiguous tensor
    if cp > 1:
        dist.all_reduce(out, group=cp_group)  # only the owning rank contributes non-zeros
    return gather_vocab(out)  # [b, v]


@torch.no_grad()
def greedy_generate(
    model,
    prompts: torch.Tensor,
    new_tokens: int,
    cp_group=None,
    vocab_size: int | None = None,
    cp_layout: str = "balanced",
) -> torch.Tensor:
    """``new_tokens`` greedy continuations ``[b, new_tokens]`` of ``prompts [b, n]`` (full forward each);
    ids at or past ``vocab_size`` (the padding of the embedding table) are never chosen."""
    seq = prompts
    for _ in range(new_tokens):
        logits = last_token_logits(model, seq, cp_group, cp_layout=cp_layout)[:, :vocab_size]  # [b, v]
        nxt = logits.argmax(dim=-1)  # [b]
        seq = torch.cat([seq, nxt[:, None]], dim=1)
    return seq[:, prompts.shape[1] :]


@dataclass
class PasskeyRecord:
    """The outcome of one prompt."""

    length: int
    depth: float
    trial: int
    key: str
    prediction: str
    generated: str
    generated_ids: list[int]
    correct: bool


def run_passkey_grid(
    model,
    tokenizer,
    anchor_id: int,
    lengths: list[int],
    depths: list[float],
    trials: int = 1,
    digits: int = 5,
    new_tokens: int | None = None,
    seed: int = 0,
    micro_batch: int = 1,
    cp_group=None,
    progress: bool = False,
    cp_layout: str = "balanced",
) -> dict:
    """Every (length, depth, trial) prompt; returns the accuracy grid ``[length][depth]`` and records."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    new_tokens = new_tokens or digits + 3
    records: list[PasskeyRecord] = []
    cells = [(n, d) for n in lengths for d in range(len(depths))]
    for length, di in tqdm(cells, desc="passkey length x depth", disable=not progress):
        prompts = [
            build_prompt(
                tokenizer.encode, anchor_id, length, depths[di], make_key(seed, length, di, t, digits)
            )
            for t in range(trials)
        ]
        for start in range(0, trials, micro_batch):
            batch = prompts[start : start + micro_batch]
            tokens = torch.tensor([p.tokens for p in batch], dtype=torch.long, device=device)  # [mb, length]
            generated = greedy_generate(
                model, tokens, new_tokens, cp_group, tokenizer.vocab_size, cp_layout
            ).tolist()
            for t, (prompt, ids) in enumerate(zip(batch, generated, strict=True), start=start):
                text = tokenizer.decode(ids)
                answer = extract_answer(text)
                records.append(
                    PasskeyRecord(length, depths[di], t, prompt.key, answer, text, ids, answer == prompt.key)
                )
    accuracy = [
        [sum(r.correct for r in records if r.length == n and r.depth == d) / trials for d in depths]
        for n in lengths
    ]
    return {
        "lengths": lengths,
        "depths": depths,
        "trials": trials,
        "accuracy": accuracy,
        "overall": sum(r.correct for r in records) / max(len(records), 1),
        "records": [asdict(r) for r in records],
    }


def accuracy_table(results: dict) -> str:
    """Accuracy per length (rows) and depth (columns), and the mean."""
    depths = results["depths"]
    lines = ["length  " + "  ".join(f"{d:>6.0%}" for d in depths) + "    mean"]
    for length, row in zip(results["lengths"], results["accuracy"], strict=True):
        cells = "  ".join(f"{a:6.2f}" for a in row)
        lines.append(f"{length:>6}  {cells}  {sum(row) / len(row):6.2f}")
    lines.append(f"overall accuracy {results['overall']:.3f} over {len(results['records'])} prompts")
    return "\n".join(lines)
