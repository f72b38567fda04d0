"""Steps that record their result or error and never stop the run: ``gpu_check.py``'s machinery.

A step on the GPU runs in a process of its own: a kernel's hard crash (abort, segfault), a hang or a sticky
CUDA error (after which every CUDA call raises, the cleanup's included) then costs that step only.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

STEP_TIMEOUT = 900  # seconds per step run in its own process


def release_cuda() -> str:
    """Free the CUDA cache: '' or 'CUDA context lost: ...' (after a sticky kernel fault every CUDA call
    raises, this one included)."""
    if not torch.cuda.is_available():
        return ""
    try:
        torch.cuda.empty_cache()
    except Exception as err:  # the context is gone: say so, never raise from a cleanup
        return f"CUDA context lost: {type(err).__name__}: {err}"
    return ""


class Check:
    """Runs steps one by one, recording each result or error; the JSON is rewritten after every step.

    With ``results`` (a step's own process, ``--only-steps``) each entry is appended there as one JSON line
    for the parent to record instead.
    """

    def __init__(self, out_dir: Path | None, context: dict, results: Path | None = None) -> None:
        self.out_dir, self.context, self.results = out_dir, context, results
        self.steps: dict[str, dict] = {}
        self.table = ""
        self.release = release_cuda
        self.cuda_lost = False

    def log(self, text: str) -> None:
        """Print and append to ``out_dir/gpu_check.log``."""
        print(text, flush=True)
        if self.out_dir is not None:
            with open(self.out_dir / "gpu_check.log", "a") as f:
                f.write(text + "\n")

    def step(self, name: str, fn, *args):
        """``fn(*args)`` as step ``name``: its result, or None when it raised or lost the CUDA context (the
        error is recorded; nothing escapes)."""
        start = time.perf_counter()
        try:
            result = fn(*args)
            entry = {"ok": True, "result": result}
        except Exception as err:  # a failed step must not stop the others
            result, entry = None, {"ok": False, "error": f"{type(err).__name__}: {err}"[-1500:]}
        lost = self.release()
        if lost:  # a kernel of this step faulted (perhaps after its result was read): the step failed
            self.cuda_lost, result = True, None
            entry = {"ok": False, "error": f"{entry.get('error', 'the step returned')}; then {lost}"[-1500:]}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        self.record(name, entry)
        return result

    def record(self, name: str, entry: dict) -> None:
        """Keep, log and save step ``name``'s ``entry`` (in a step's own process: hand it to the parent)."""
        self.steps[name] = entry
        if self.results is not None:
            with open(self.results, "a") as f:
                f.write(json.dumps([name, entry], default=_plain) + "\n")
            return
        summary = json.dumps(entry.get("result"), default=str)[:300] if entry["ok"] else entry["error"][-300:]
        self.log(f"[{'ok' if entry['ok'] else 'FAILED'}] {name} ({entry['seconds']} s): {summary}")
        self.save()

    def save(self) -> None:
        """``out_dir/gpu_check.json``: every step so far."""
        if self.out_dir is not None:
            record = {**self.context, "steps": self.steps, "table": self.table}
            (self.out_dir / "gpu_check.json").write_text(json.dumps(record, indent=1, default=str))


def _plain(value):
    """JSON for numpy/torch scalars (their Python value), else the text."""
    return value.item() if hasattr(value, "item") else str(value)


def _process_end(returncode: int, stderr: str) -> str:
    """How a step's process ended, for its error: the exit code or signal and stderr's last line."""
    how = f"was killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exited {returncode}"
    last = next((line for line in reversed(stderr.splitlines()) if line.strip()), "")
    return f"its process {how}" + (f": {last[-300:]}" if last else " (no error output)")


def _entries(results: Path) -> list:
    """The ``[name, entry]`` lines a step's process wrote (a line cut short by its death is dropped)."""
    entries = []
    for line in results.read_text().splitlines() if results.exists() else []:
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return entries


def run_isolated(check: Check, script: Path, names: list[str], argv: list[str]) -> None:
    """Steps ``names``, in order, in processes of their own (``script ARGV --only-steps NAME...``): a hard
    crash, a hang or a lost CUDA context costs its own step only; the next step starts a fresh process."""
    pending = list(names)
    while pending:
        with tempfile.TemporaryDirectory() as tmp:
            results = Path(tmp) / "steps.jsonl"
            cmd = [sys.executable, str(script), *argv, "--results", str(results), "--only-steps", *pending]
            start, timeout = time.perf_counter(), STEP_TIMEOUT * len(pending)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                ended, failed = _process_end(proc.returncode, proc.stderr), proc.returncode != 0
            except subprocess.TimeoutExpired:
                ended, failed = f"its process ran past {timeout} s and was killed", True
            done = _entries(results)
        for name, entry in done:
            check.record(name, entry)
        pending = pending[len(done) :]
        if pending and (failed or not done):  # the first step not recorded is the one its process died in
            seconds = round(time.perf_counter() - start - sum(e["seconds"] for _, e in done), 2)
            check.record(pending.pop(0), {"ok": False, "error": ended, "seconds": seconds})
