"""Preprocessing throughput: tools/preprocess_data.py against a Megatron-LM-style reference pipeline.

The reference is built the way Megatron-LM's ``tools/preprocess_data.py`` works: ``json.loads`` per line in
a ``multiprocessing.Pool.imap`` with chunksize 32, sentencepiece ``encode`` per document, megatron-core
``IndexedDatasetBuilder.add_document`` in the main process. Both run as fresh processes on the same
generated corpus and tokenizer (trained offline here); their plain outputs must be byte-identical.

Three measures per pipeline (each the best of ``--repeat`` runs): wall seconds of a fresh process (imports
included: megatron-core takes seconds to import), seconds inside the pipeline by its own clock (imports
excluded), and CPU seconds of the process and its workers (the measure other load on the machine disturbs
least). Ratios are of tokens/s, or tokens per CPU second.

    python benchmarks/preprocess.py            # ~50 MB corpus, 1 and 2 workers
    python benchmarks/preprocess.py --quick    # ~8 MB
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def generate_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """A jsonl corpus of about ``megabytes`` MB from the bundled generator; returns the document count."""
    spec = importlib.util.spec_from_file_location(
        "generate_corpus", REPO / "examples/data/generate_corpus.py"
    )
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    rng = random.Random(seed)
    written, count = 0, 0
    with open(path, "w", encoding="utf-8") as out:
        while written < megabytes * 1e6:
            n = 400 if count % 150 == 0 else max(1, int(rng.lognormvariate(2.5, 0.9)))
            line = json.dumps({"id": count, "text": generator.document(rng, n)}) + "\n"
            out.write(line)
            written += len(line)
            count += 1
    return count


def reference_run(input_path: str, output_prefix: str, model: str, workers: int) -> None:
    """The Megatron-LM-style pipeline; prints its processing seconds and token count as JSON."""
    import multiprocessing
    import warnings

    import numpy as np
    import sentencepiece

    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from megatron.core.datasets.indexed_dataset import DType, IndexedDatasetBuilder

    start = time.perf_counter()
    vocab = sentencepiece.SentencePieceProcessor(model_file=model).get_piece_size()
    builder = IndexedDatasetBuilder(output_prefix + ".bin", dtype=DType.optimal_dtype(vocab))
    tokens = 0
    with open(input_path, encoding="utf-8") as stream:
        pool = multiprocessing.Pool(workers, initializer=_reference_init, initargs=(model,))
        for ids, lengths, _ in pool.imap(_reference_encode, stream, 32):
            if lengths:
                builder.add_document(np.array(ids), lengths)
                tokens += len(ids)
        pool.close()
    builder.finalize(output_prefix + ".idx")
    print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens}))


_reference: dict = {}


def _reference_init(model: str) -> None:
    import sentencepiece

    _reference["sp"] = sentencepiece.SentencePieceProcessor(model_file=model)


def _reference_encode(line: str) -> tuple[list[int], list[int], int]:
    ids = _reference["sp"].encode(json.loads(line)["text"])
    return ids, [len(ids)] if ids else [], len(line)


class Run(NamedTuple):
    """One pipeline run: wall seconds (a fresh process), seconds inside the pipeline, tokens, CPU seconds."""

    wall: float
    inner: float
    tokens: int
    cpu: float  # user + system of the process and its pool workers: what other load on the machine spares


def timed(command: list[str]) -> tuple[float, float, str]:
    """Wall and CPU seconds of a fresh process (interpreter start and imports included), and its stdout."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, result.stdout


def tool_run(corpus: Path, prefix: Path, model: str, workers: int, *extra: str) -> Run:
    """One run of tools/preprocess_data.py."""
    command = [sys.executable, str(REPO / "tools/preprocess_data.py"), "--input", str(corpus),
               "--output-prefix", str(prefix), "--tokenizer-type", "SentencePieceTokenizer",
               "--tokenizer-model", model, "--workers", str(workers), "--no-progress", *extra]  # fmt: skip
    wall, cpu, out = timed(command)
    inner = float(out.split("wall time ")[1].split(" s")[0])
    tokens = int(out.split("tokens ")[1].split("\n")[0].replace(",", ""))
    return Run(wall, inner, tokens, cpu)


def reference(corpus: Path, prefix: Path, model: str, workers: int) -> Run:
    """One run of the Megatron-style reference in a fresh process."""
    command = [sys.executable, __file__, "--reference-run", str(corpus), str(prefix), model, str(workers)]
    wall, cpu, out = timed(command)
    result = json.loads(out.strip().splitlines()[-1])
    return Run(wall, result["seconds"], result["tokens"], cpu)


def best_of(repeat: int, run, *args) -> Run:
    """The fastest of ``repeat`` runs, per measure: the one least disturbed by other load."""
    runs = [run(*args) for _ in range(repeat)]
    return Run(
        min(r.wall for r in runs), min(r.inner for r in runs), runs[0].tokens, min(r.cpu for r in runs)
    )


def measure(work: Path, corpus: Path, model: str, workers: int, seq_length: int, repeat: int) -> tuple:
    """One row: the reference, plain, packed greedy and packed best-fit at ``workers``."""
    ref = best_of(repeat, reference, corpus, work / f"ref{workers}", model, workers)
    plain = best_of(repeat, tool_run, corpus, work / f"plain{workers}", model, workers)
    packing = ("--seq-length", str(seq_length), "--pack")
    greedy = best_of(repeat, tool_run, corpus, work / f"greedy{workers}", model, workers, *packing, "greedy")
    best_fit = best_of(repeat, tool_run, corpus, work / f"bf{workers}", model, workers, *packing, "best-fit")
    for suffix in (".bin", ".idx"):
        ours = (work / f"plain{workers}_text_document{suffix}").read_bytes()
        reference_bytes = (work / f"ref{workers}{suffix}").read_bytes()
        assert ours == reference_bytes, f"plain {suffix} differs from the reference"
    return workers, ref, plain, greedy, best_fit


def main() -> None:
    """Generate, train, run every pipeline at 1 and 2 workers, print tokens/s and ratios."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="an ~8 MB corpus instead of ~50 MB")
    parser.add_argument("--megabytes", type=float, default=None)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seq-length", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=3, help="runs per pipeline; the fastest counts")
    parser.add_argument("--reference-run", nargs=4, metavar=("INPUT", "PREFIX", "MODEL", "WORKERS"))
    args = parser.parse_args()
    if args.reference_run:
        input_path, prefix, model, workers = args.reference_run
        return reference_run(input_path, prefix, model, int(workers))

    from megatron_anchor.data import train_sentencepiece

    work = Path(tempfile.mkdtemp(prefix="anchor_preprocess_bench_"))
    corpus = work / "corpus.jsonl"
    documents = generate_corpus(corpus, args.megabytes or (8 if args.quick else 50))
    with open(corpus, encoding="utf-8") as stream:
        texts = [json.loads(line)["text"] for _, line in zip(range(2000), stream)]
    model = train_sentencepiece(texts, str(work / "tok"), 8000)
    size = os.path.getsize(corpus) / 1e6
    print(f"corpus: {size:.1f} MB, {documents:,} documents; tokenizer trained offline; best of {args.repeat}")
    report([measure(work, corpus, model, w, args.seq_length, args.repeat) for w in args.workers])


def report(rows) -> None:
    """Tokens/s per pipeline (end to end, in-process, per CPU second), then the ratios the goals are about."""
    print(f"{'workers':>7} {'pipeline':<21} {'wall s':>6} {'Mtok/s':>6} {'in-proc s':>9} {'Mtok/s':>6}"
          f" {'cpu s':>6} {'Mtok/cpu-s':>10}")  # fmt: skip
    names = ("reference (Megatron)", "plain", "packed greedy", "packed best-fit")
    for workers, *runs in rows:
        for name, run in zip(names, runs):
            rates = [run.tokens / seconds / 1e6 for seconds in (run.wall, run.inner, run.cpu)]
            print(f"{workers:>7} {name:<21} {run.wall:6.2f} {rates[0]:6.2f} {run.inner:9.2f} {rates[1]:6.2f}"
                  f" {run.cpu:6.2f} {rates[2]:10.2f}")  # fmt: skip
    print("throughput ratios (end to end | in-process | per CPU second):")
    for workers, ref, plain, greedy, best_fit in rows:
        parts = []
        for name, fast, slow in (("plain/reference", plain, ref), ("greedy/plain", greedy, plain),
                                 ("best-fit/plain", best_fit, plain)):  # fmt: skip
            # Equal token counts, so a throughput ratio is the inverse ratio of seconds.
            ratios = [getattr(slow, f) / getattr(fast, f) for f in ("wall", "inner", "cpu")]
            parts.append(f"{name} " + " | ".join(f"{r:.2f}x" for r in ratios))
        print(f"  workers={workers}: " + "; ".join(parts))


if __name__ == "__main__":
    main()
