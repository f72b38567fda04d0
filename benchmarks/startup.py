"""Start-up time of the command-line tools: ``--help`` of every tool and a tiny conversion, before and after.

Each command runs in a fresh process (the best of ``--repeat`` runs), in this checkout and, with
``--before REF``, in a copy of commit REF (``git archive``), with the same interpreter and packages (wandb
included when installed, since megatron-core imports it)::

    python benchmarks/startup.py --before d877f52 [--repeat 3]

Prints one row per command: seconds before and after, their ratio, and the warning lines each printed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.name for p in (REPO / "tools").glob("*.py"))


def commands(hf_dir: Path, out_dir: Path) -> dict[str, list[str]]:
    """The timed commands, by row name (run from the checkout's root)."""
    rows = {f"{tool} --help": [f"tools/{tool}", "--help"] for tool in TOOLS}
    rows["-m megatron_anchor.pretrain --help"] = ["-m", "megatron_anchor.pretrain", "--help"]
    rows["convert_hf_checkpoint.py import (tiny)"] = [
        "tools/convert_hf_checkpoint.py", "import", "--hf-dir", str(hf_dir), "--save", str(out_dir),
        "--quiet",
    ]
    return rows


def tiny_hf_model(directory: Path) -> Path:
    """A 2-layer random Llama saved by transformers (built here, so that no timed process pays for it)."""
    import transformers

    config = transformers.LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=100, max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(directory)
    return directory


def time_command(root: Path, argv: list[str], repeat: int, fresh: Path | None) -> tuple[float, int]:
    """(best wall time in seconds, warning lines on stderr) of ``python argv`` run in ``root``; ``fresh``
    is removed before each run (a conversion's output directory)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    best, warnings = float("inf"), 0
    for _ in range(repeat):
        if fresh is not None:
            subprocess.run(["rm", "-rf", str(fresh)], check=True)
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *argv], cwd=root, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} in {root} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        best = min(best, elapsed)
        warnings = sum("Warning" in line for line in proc.stderr.splitlines())
    return best, warnings


def checkout(ref: str, into: Path) -> Path:
    """Commit ``ref`` of this repository extracted into ``into``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main() -> None:
    """Time every command in each checkout and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=None, help="git commit to compare with (default: this checkout only)")
    p.add_argument("--repeat", type=int, default=3, help="runs per command; the fastest counts")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hf_dir = tiny_hf_model(work / "hf")
        roots = {"after": REPO}
        if args.before:
            roots = {"before": checkout(args.before, Path(tempfile.mkdtemp(dir=work))), **roots}
        results: dict[str, dict[str, tuple[float, int]]] = {}
        for name, argv in commands(hf_dir, work / "converted").items():
            fresh = work / "converted" if "import" in argv else None
            results[name] = {
                label: time_command(root, argv, args.repeat, fresh) for label, root in roots.items()
            }
    wandb = "installed" if importlib.util.find_spec("wandb") else "not installed"
    print(f"start-up, best of {args.repeat} (wandb {wandb}; load average {os.getloadavg()[0]:.1f})")
    labels = list(roots)
    header = f"{'command':<40}" + "".join(f"{label + ' s':>10}{'warn':>6}" for label in labels)
    print(header + (f"{'ratio':>8}" if len(labels) == 2 else ""))
    for name, by_label in results.items():
        row = f"{name:<40}" + "".join(f"{by_label[lb][0]:>10.2f}{by_label[lb][1]:>6}" for lb in labels)
        if len(labels) == 2:
            row += f"{by_label['before'][0] / by_label['after'][0]:>7.1f}x"
        print(row)


if __name__ == "__main__":
    main()
