"""The GPU check in one command: every GPU kernel's exactness, anchor vs causal speed, one training step.

    python benchmarks/gpu_check.py --out "$OUT"     # one H100/H200, no network
    python benchmarks/gpu_check.py --cpu-smoke       # the same steps at tiny sizes on the CPU (CI)

A bare GPU machine (Python 3.12, torch, no megatron-core, no network) needs the wheels of
``bash scripts/gpu_wheels.sh``, run where the package index is reachable: the check installs ``.whl/`` into
/tmp when megatron-core is missing. Every step runs on its own: one that fails records its error and the next
one runs; the GPU steps (exactness per backend, matmul, speed per S, the training step) run in processes of
their own, so that a kernel's hard crash or a lost CUDA context costs one step only
(``benchmarks/isolated_steps.py``). ``gpu_check.json`` (rewritten after each step), ``gpu_check.log`` and the
final table go to ``--out`` whatever fails.

1. packages: Python, torch, CUDA, the device; megatron-core (installed from ``.whl/`` when missing).
2. backends: whether each GPU kernel runs here (bf16, head dim 128), and if not, why.
3. exactness BACKEND MODE: against dense fp64 attention on small shapes for every GPU kernel that runs: bf16,
   GQA, the three attention modes, out and dq/dk/dv, relative error <= 2e-2. ``--cpu-smoke`` checks
   ``sdpa_cpu``, and ``flash``, which must fail on the CPU: the failure is recorded, the next step runs.
   It also runs two steps that fail on purpose before matmul: one aborts its process, one loses the CUDA
   context (simulated) in its cleanup.
4. matmul: the bf16 matmul rate of this GPU (8192^3), the yardstick.
5. speed S: anchor and causal attention through this engine at S = 32K, 64K, 128K (Llama-3-8B heads at TP=2:
   16 query heads, 4 K/V heads, d=128; the documents of ``benchmarks/attention.py``), beside the flash
   kernel's own causal call and torch SDPA causal (cuDNN/flash), forward and forward+backward, in TFLOP/s
   of visible pairs (4*h*d FLOPs per pair forward, 14*h*d forward+backward) and as a share of the matmul
   rate.
6. training step: three steps of a ~1B Llama-shape model at S = 32K, CP = 1, through
   ``megatron_anchor.pretrain`` (bf16, synthetic data): tokens/s and MFU.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
sys.path.insert(0, str(REPO))
from doc_mixes import realistic_doc_ids  # noqa: E402  (benchmarks/doc_mixes.py, beside this file)
from isolated_steps import Check, run_isolated  # noqa: E402  (benchmarks/isolated_steps.py)

from megatron_anchor.attention import (  # noqa: E402
    anchor_cp_attention,
    build_attention_plan,
    dense_reference_attention,
)
from megatron_anchor.attention.backends import select_backend  # noqa: E402
from megatron_anchor.attention.flash import GPU_BACKENDS, gpu_backend_status  # noqa: E402
from megatron_anchor.attention.plan import kernel_call  # noqa: E402
from megatron_anchor.parallel import free_port, visible_pairs  # noqa: E402

WHEELS = REPO / ".whl"  # scripts/gpu_wheels.sh
SITE = Path("/tmp/megatron_anchor_site")
TOLERANCE = 2e-2
HEAD_DIM = 128
# --cpu-smoke only: two steps that fail like a kernel fault, in front of matmul in one process's list.
SMOKE_FAULTS = ("fault abort", "fault cleanup")


def _megatron_core_version() -> str | None:
    """megatron-core's version when importable (found, not imported: its import takes seconds), else None."""
    try:
        if importlib.util.find_spec("megatron.core") is None:
            return None
    except ModuleNotFoundError:
        return None
    try:
        return importlib.metadata.version("megatron-core")
    except importlib.metadata.PackageNotFoundError:
        return "a source tree (no package metadata)"


def packages(device: torch.device) -> dict:
    """Versions and the device; megatron-core installed from ``.whl/`` into ``SITE`` when missing."""
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    version = _megatron_core_version()
    if version is None:
        wheels = sorted(str(w) for w in WHEELS.glob("*.whl"))
        if not wheels:
            raise RuntimeError(
                f"megatron-core is missing and {WHEELS} holds no wheels: run scripts/gpu_wheels.sh"
            )
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--upgrade", "--target", str(SITE), *wheels]  # fmt: skip
        proc = subprocess.run(pip, capture_output=True, text=True)
        if proc.returncode != 0:
            said = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
            raise RuntimeError(
                f"pip could not install {WHEELS}/*.whl into {SITE} (exit {proc.returncode}): "
                f"{said[-1] if said else 'no output'}"
            )
        sys.path.insert(0, str(SITE))
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), os.environ.get("PYTHONPATH")]))
        importlib.invalidate_caches()
        version = _megatron_core_version()
        info["installed_from"] = [Path(w).name for w in wheels]
    info["megatron_core"] = version
    return info


def backends(device: torch.device) -> dict:
    """Each GPU kernel: ``runs`` or ``off: why``."""
    statuses = {name: gpu_backend_status(name, device, torch.bfloat16, HEAD_DIM) for name in GPU_BACKENDS}
    return {name: "runs" if ok else f"off: {why}" for name, (ok, why) in statuses.items()}


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def exactness(backend: str, mode: str, device: torch.device, seq_len: int) -> dict:
    """Relative errors of out, dq, dk, dv (bf16, GQA) against dense fp64 attention."""
    gen = torch.Generator().manual_seed(0)
    doc_ids = realistic_doc_ids(seq_len, median=max(8, seq_len // 16))
    q, dout = (torch.randn(seq_len, 1, 8, HEAD_DIM, generator=gen) for _ in range(2))
    k, v = (torch.randn(seq_len, 1, 2, HEAD_DIM, generator=gen) for _ in range(2))
    inputs = [t.to(device, torch.bfloat16).requires_grad_() for t in (q, k, v)]
    out = anchor_cp_attention(*inputs, doc_ids, mode=mode, backend=backend)  # its plan: on q's own device
    out.backward(dout.to(device, torch.bfloat16))
    ref_in = [t.detach().double().requires_grad_() for t in inputs]
    ref = dense_reference_attention(*ref_in, doc_ids.to(device), mode)
    ref.backward(dout.to(device).double())
    got, want = (out, *(t.grad for t in inputs)), (ref, *(t.grad for t in ref_in))
    errors = {name: _rel(g, r) for name, g, r in zip(("out", "dq", "dk", "dv"), got, want)}
    return {**errors, "pass": max(errors.values()) <= TOLERANCE}


def _timer(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def timed(fn, device: torch.device, repeat: int) -> float:
    """Best wall time of ``fn`` over ``repeat`` runs after one warm-up (synchronised on CUDA)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = _timer(device)
        fn()
        best = min(best, _timer(device) - start)
    return best


def matmul_rate(device: torch.device, n: int) -> float:
    """bf16 (fp32 on the CPU) square matmul FLOP/s."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return 2 * n**3 / timed(lambda: a @ b, device, 5)


def _fwd_bwd_times(forward, backward, device, repeat: int) -> dict:
    """Seconds of ``forward()`` (no grad) and of ``backward(forward())``."""
    with torch.no_grad():
        fwd = timed(forward, device, repeat)
    return {"fwd": fwd, "fwd_bwd": timed(lambda: backward(forward()), device, repeat)}


def _kernel_causal(q, k, v, kernel, device, repeat: int) -> dict:
    """The selected flash kernel's own call: one causal sequence of S, no plan, no merge."""
    seq_len = q.shape[0]
    whole = (torch.zeros(1, dtype=torch.long).numpy(), torch.full((1,), seq_len).numpy())  # (starts, lengths)
    call = kernel_call(True, whole, whole, q.device)
    qp, kp, vp = (t.detach()[:, 0] for t in (q, k, v))  # [S, h(_kv), d]
    dout, scale = torch.ones_like(qp), HEAD_DIM**-0.5
    forward = lambda: kernel.forward(qp, kp, vp, call, scale)  # noqa: E731
    backward = lambda r: kernel.backward(dout, qp, kp, vp, r[0], r[1], call, scale, r[2])  # noqa: E731
    return _fwd_bwd_times(forward, backward, device, repeat)


def attention_speed(seq_len: int, device, backend: str, heads: int, heads_kv: int, repeat: int) -> dict:
    """Seconds of anchor and causal (this engine), the kernel's causal call, SDPA causal: fwd, fwd+bwd."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    doc_ids = realistic_doc_ids(seq_len)
    gen = torch.Generator().manual_seed(1)
    shapes = [(seq_len, 1, heads, HEAD_DIM), *[(seq_len, 1, heads_kv, HEAD_DIM)] * 2]
    q, k, v = (torch.randn(s, generator=gen).to(device, dtype).requires_grad_() for s in shapes)
    rows, causal_pairs = {}, visible_pairs(doc_ids, "causal")
    for mode in ("anchor", "causal"):
        plan = build_attention_plan(doc_ids, mode, device=q.device)  # from the tensors' own device, once
        call = lambda plan=plan: anchor_cp_attention(q, k, v, plan=plan, backend=backend)  # noqa: E731
        times = _fwd_bwd_times(call, lambda out: out.sum().backward(), device, repeat)
        rows[mode] = times | {"visible": visible_pairs(doc_ids, mode)}
    kernel = select_backend(backend, q.device, dtype, HEAD_DIM)
    rows["kernel_causal"] = _kernel_causal(q, k, v, kernel, device, repeat) | {"visible": causal_pairs}
    qs, ks, vs = (t.detach().permute(1, 2, 0, 3) for t in (q, k, v))  # [1, h, S, d]
    group = heads // heads_kv
    qs, ks, vs = (
        t.requires_grad_() for t in (qs, ks.repeat_interleave(group, 1), vs.repeat_interleave(group, 1))
    )
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks, vs, is_causal=True)  # noqa: E731
    rows["sdpa_causal"] = _fwd_bwd_times(sdpa, lambda out: out.sum().backward(), device, repeat)
    rows["sdpa_causal"]["visible"] = causal_pairs
    return rows


def training_step(out_dir: Path | None, smoke: bool) -> dict:
    """tokens/s and MFU of ``megatron_anchor.pretrain`` on a ~1B Llama shape at S=32K (tiny in smoke mode)."""
    shape = (
        ["--num-layers", "2", "--hidden-size", "64", "--ffn-hidden-size", "128", "--num-attention-heads", "4",
         "--seq-length", "256", "--vocab-size", "256"]
        if smoke
        else ["--num-layers", "16", "--hidden-size", "2048", "--ffn-hidden-size", "5632",
              "--num-attention-heads", "16", "--num-query-groups", "8", "--seq-length", "32768",
              "--vocab-size", "32000", "--bf16", "--recompute-granularity", "selective"]
    )  # fmt: skip
    log_path = (out_dir or Path("/tmp")) / "train_step.jsonl"
    log_path.unlink(missing_ok=True)
    shape += ["--normalization", "RMSNorm", "--swiglu", "--disable-bias-linear", "--hidden-dropout", "0",
              "--untie-embeddings-and-output-weights"]  # the Llama architecture
    cmd = [sys.executable, "-m", "megatron_anchor.pretrain", *shape, "--mock-data", "--train-iters", "3",
           "--log-interval", "1", "--micro-batch-size", "1", "--log-jsonl", str(log_path)]  # fmt: skip
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))  # + SITE
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    if proc.returncode != 0:
        raise RuntimeError(f"pretrain exited {proc.returncode}: {(proc.stderr or proc.stdout)[-800:]}")
    records = [json.loads(line) for line in log_path.read_text().splitlines() if '"loss"' in line]
    return {key: records[-1][key] for key in ("tokens_per_s", "tflops_per_gpu", "mfu", "loss")}


def _speed_lines(rows: dict, rate: float | None, heads: int) -> list[str]:
    lines = []
    for name, row in rows.items():
        for key, flops in (("fwd", 4), ("fwd_bwd", 14)):
            tflops = flops * HEAD_DIM * heads * row["visible"] / row[key] / 1e12
            share = f"{100 * tflops * 1e12 / rate:5.1f}% of matmul" if rate else ""
            ratio = rows["anchor"][key] / row[key]
            lines.append(
                f"{name:>14} {key:>8} {1e3 * row[key]:10.1f} ms {tflops:8.1f} TFLOP/s {share}  "
                f"time anchor/this {ratio:5.2f}"
            )
    return lines


def _step_lines(name: str, entry: dict, check: Check) -> list[str]:
    """The table's lines for one step."""
    if not entry["ok"]:
        return [f"{name}: FAILED: {entry['error'].splitlines()[-1][-300:]}"]
    result = entry["result"]
    if name == "packages":
        origin = f" (from {', '.join(result['installed_from'])})" if "installed_from" in result else ""
        versions = f"Python {result['python']}, torch {result['torch']}, CUDA {result['cuda']}"
        return [f"{result['device']}; {versions}, megatron-core {result['megatron_core']}{origin}"]
    if name == "backends":
        return [f"backend {backend}: {status}" for backend, status in result.items()]
    if name.startswith("exactness"):
        worst = max(v for k, v in result.items() if k != "pass")
        return [f"{name}: worst rel. error {worst:.2e} ({'PASS' if result['pass'] else 'FAIL'})"]
    if name == "matmul":
        return [f"matmul: {result / 1e12:.1f} TFLOP/s"]
    if name.startswith("speed"):
        rate = check.steps.get("matmul", {}).get("result")
        return [f"{name} (kernel {check.context['speed_kernel']}):"] + _speed_lines(
            result, rate, check.context["heads"]
        )
    mfu = "-" if result.get("mfu") is None else f"{100 * result['mfu']:.1f}%"  # the trainer's own peak table
    return [
        f"{name}: {result['tokens_per_s']:.0f} tokens/s, {result['tflops_per_gpu']:.1f} TFLOP/s, MFU {mfu}"
    ]


def final_table(check: Check) -> str:
    """One line or block per step, in order; a step whose lines cannot be made says so."""
    lines = []
    for name, entry in check.steps.items():
        try:
            lines += _step_lines(name, entry, check)
        except Exception as err:  # the table is written whatever a step returned
            lines.append(f"{name}: (no table line: {type(err).__name__}: {err})")
    return "\n".join(lines)


def _simulated_lost_context() -> str:
    return "CUDA context lost: RuntimeError: CUDA error: an illegal memory access (simulated by --cpu-smoke)"


def step_call(name: str, device: torch.device, args: argparse.Namespace, check: Check) -> tuple:
    """``(fn, args)`` of the step called ``name`` (``--only-steps``)."""
    smoke, words = args.cpu_smoke, name.split()
    heads, heads_kv = check.context["heads"], check.context["heads_kv"]
    if words[0] == "exactness":
        return exactness, (words[1], words[2], device, 512 if smoke else 2048)
    if name == "matmul":
        return matmul_rate, (device, 1024 if smoke else 8192)
    if words[0] == "speed":
        return attention_speed, (int(words[1]), device, args.speed_kernel, heads, heads_kv, args.repeat)
    if smoke and name == "fault abort":  # a kernel's hard crash: the process dies mid-step
        return os.abort, ()
    if smoke and name == "fault cleanup":  # a sticky CUDA error met by the cleanup after the step
        check.release = _simulated_lost_context
        return (lambda: "returned"), ()
    raise ValueError(f"gpu_check.py: unknown step {name!r}")


def run_only(check: Check, device: torch.device, args: argparse.Namespace) -> None:
    """The steps of ``--only-steps`` in this process, until one loses the CUDA context."""
    for name in args.only_steps:
        fn, fn_args = step_call(name, device, args, check)
        check.step(name, fn, *fn_args)
        if check.cuda_lost:  # every later CUDA call would fail: the parent starts a fresh process
            return


def run_all(check: Check, device: torch.device, args: argparse.Namespace) -> None:
    """Every step; those on the GPU (exactness per backend, matmul, speed per S) in their own processes."""
    smoke = args.cpu_smoke
    check.step("packages", packages, device)
    statuses = check.step("backends", backends, device) or {}
    runnable = [name for name in ("flash_attn3", "flash", "flash_attn2") if statuses.get(name) == "runs"]
    check.context["speed_kernel"] = kernel = "sdpa_cpu" if smoke else (runnable[:1] or ["torch"])[0]
    argv = [*(["--cpu-smoke"] if smoke else []), "--repeat", str(args.repeat), "--speed-kernel", kernel]
    for backend in ["sdpa_cpu", "flash"] if smoke else runnable:  # smoke: flash must fail on the CPU
        modes = ("causal", "intra_doc", "anchor")
        run_isolated(check, SCRIPT, [f"exactness {backend} {mode}" for mode in modes], argv)
    run_isolated(check, SCRIPT, [*(SMOKE_FAULTS if smoke else ()), "matmul"], argv)
    for seq_len in [1024, 2048] if smoke else args.seqs:
        run_isolated(check, SCRIPT, [f"speed {seq_len}"], argv)
    check.step("training step", training_step, args.out, smoke)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.log and gpu_check.json")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (checks the script)")
    parser.add_argument("--seqs", type=int, nargs="+", default=[32768, 65536, 131072])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only-steps", nargs="+", help="run these steps only (the check's own processes)")
    parser.add_argument("--results", type=Path, help="with --only-steps: where each step's entry goes")
    parser.add_argument("--speed-kernel", default="torch", help="with --only-steps: the speed steps' kernel")
    args = parser.parse_args()
    smoke = args.cpu_smoke
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    device = (
        torch.device("cpu") if smoke else torch.device("cuda", torch.cuda.current_device() if cuda else 0)
    )
    heads, heads_kv = (4, 1) if smoke else (16, 4)
    context = {"device": str(device), "heads": heads, "heads_kv": heads_kv}
    if args.only_steps:
        run_only(Check(None, context, args.results), device, args)
        return
    check, start = Check(args.out, context), time.perf_counter()
    try:
        run_all(check, device, args)
    finally:  # the table and the JSON are written whatever happened, an interrupt included
        check.table = final_table(check) + f"\n({time.perf_counter() - start:.0f} s)"
        check.save()
        check.log("\n" + check.table)


if __name__ == "__main__":
    main()
