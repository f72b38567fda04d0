"""Generate the small bundled corpus (synthetic, license-clean) used by the quickstart and tests.

Documents are procedurally written: fictional places, people and ledgers whose names recur within a document,
so that attending within the document helps prediction. Lengths are log-normal with a few long documents,
like a long-context pretraining mix. Deterministic: ``python examples/data/generate_corpus.py`` rewrites
``examples/data/sample_corpus.jsonl`` byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYLLABLES = [
    "ka", "lo", "mi", "ren", "tas", "vel", "dor", "shi", "nu", "pel", "gar", "ith", "mor", "zen", "ul",
]
TRADES = ["weaver", "miller", "smith", "potter", "scribe", "sailor", "baker", "mason", "healer", "farmer"]
GOODS = ["wool", "salt", "copper", "barley", "amber", "linen", "honey", "timber", "glass", "pepper"]
WEATHER = ["rain", "fog", "snow", "wind", "sunshine", "frost", "thunder", "heat"]
OPENINGS = [
    "The records of {town} begin in the year {year}.",
    "{town} is a small town on the river {river}.",
    "Travellers reach {town} by the old road from {other}.",
]


def make_name(rng: random.Random, parts: int = 2) -> str:
    """A pronounceable capitalised name."""
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def sentence(rng: random.Random, town: str, people: list[str], river: str) -> str:
    """One sentence about the document's own town and people."""
    person, other = rng.sample(people, 2)
    good = rng.choice(GOODS)
    n = rng.randint(2, 90)
    templates = [
        f"{person} the {rng.choice(TRADES)} sold {n} bales of {good} to {other}.",
        f"In the month of {rng.choice(WEATHER)}, {person} walked from {town} to the river {river}.",
        f"{other} owed {person} {n} coins for the {good}.",
        f"The ledger of {town} lists {n} measures of {good} kept by {person}.",
        f"{person} and {other} repaired the bridge over the river {river}.",
        f"When the {rng.choice(WEATHER)} came, {person} stayed home and counted {n} jars of {good}.",
        f"{person} said to {other}: the {good} of {town} is the best on the river {river}.",
    ]
    return rng.choice(templates)


def document(rng: random.Random, n_sentences: int) -> str:
    """A document: a town, its cast of people, and sentences about them in paragraphs."""
    town, river, other = make_name(rng, 3), make_name(rng, 2), make_name(rng, 3)
    people = [make_name(rng, rng.randint(2, 3)) for _ in range(rng.randint(3, 7))]
    first = rng.choice(OPENINGS).format(town=town, year=rng.randint(800, 1900), river=river, other=other)
    paragraphs, current = [], [first]
    for _ in range(n_sentences):
        current.append(sentence(rng, town, people, river))
        if rng.random() < 0.15:
            paragraphs.append(" ".join(current))
            current = []
    paragraphs.append(" ".join(current))
    return "\n\n".join(p for p in paragraphs if p)


def main() -> None:
    """Write the corpus as jsonl with a ``text`` field per line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(Path(__file__).with_name("sample_corpus.jsonl")))
    parser.add_argument("--documents", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open(args.output, "w", encoding="utf-8") as out:
        for i in range(args.documents):
            # Log-normal lengths (median ~12 sentences, ~250 tokens) plus an occasional very long document.
            n = 400 if i % 150 == 0 else max(1, int(rng.lognormvariate(2.5, 0.9)))
            out.write(json.dumps({"id": i, "text": document(rng, n)}) + "\n")


if __name__ == "__main__":
    main()
