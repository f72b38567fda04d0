"""The GPU check in one command: exactness of every GPU kernel, anchor vs causal speed, one training step.

    python benchmarks/gpu_check.py --out "$OUT"     # one H100/H200, no network, under 8 minutes
    python benchmarks/gpu_check.py --cpu-smoke       # the same code at tiny sizes on the CPU (seconds)

1. Exactness against dense fp64 attention on small shapes for every GPU backend that runs here
   (``flash``: torch's FlashAttention-2 varlen ops; ``flash_attn3`` / ``flash_attn2`` when installed): bf16,
   GQA, the three attention modes, forward and dq/dk/dv, relative error <= 2e-2.
2. The bf16 matmul rate of this GPU (8192^3), the yardstick.
3. Anchor vs causal attention at S = 32K, 64K, 128K (Llama-3-8B heads at TP=2: 16 query heads, 4 K/V heads,
   d=128) with the documents of ``benchmarks/attention.py`` (log-normal, median 1K, one of S/2), forward and
   forward+backward, in TFLOP/s of visible pairs (4*h*d FLOPs per pair forward, 14*h*d forward+backward) and
   as a fraction of the matmul rate, beside torch SDPA causal (cuDNN/flash) as the peer.
4. One training step of a ~1B Llama-shape model at S = 32K through ``megatron_anchor.pretrain`` (bf16,
   synthetic data), its tokens/s and MFU (megatron-core must be installed: it can travel as a wheel).
One table is printed last; the full log and a JSON of every number go to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from doc_mixes import realistic_doc_ids  # noqa: E402  (benchmarks/doc_mixes.py, beside this file)

from megatron_anchor.attention import (  # noqa: E402
    anchor_cp_attention,
    build_attention_plan,
    dense_reference_attention,
    visible_pairs,
)
from megatron_anchor.attention.flash import GPU_BACKENDS, gpu_backend_status  # noqa: E402
from megatron_anchor.parallel import free_port  # noqa: E402


def log(out_dir: Path | None, text: str) -> None:
    """Print and append to ``out_dir/gpu_check.log``."""
    print(text, flush=True)
    if out_dir is not None:
        with open(out_dir / "gpu_check.log", "a") as f:
            f.write(text + "\n")


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


def exactness(backend: str, device: torch.device, seq_len: int) -> dict:
    """Worst relative error of out, dq, dk, dv over the three modes (bf16, GQA) against fp64."""
    gen = torch.Generator().manual_seed(0)
    doc_ids = realistic_doc_ids(seq_len, median=max(8, seq_len // 16))
    worst = {}
    for mode in ("causal", "intra_doc", "anchor"):
        q, dout = (torch.randn(seq_len, 1, 8, 128, generator=gen) for _ in range(2))
        k, v = (torch.randn(seq_len, 1, 2, 128, generator=gen) for _ in range(2))
        inputs = [t.to(device, torch.bfloat16).requires_grad_() for t in (q, k, v)]
        out = anchor_cp_attention(*inputs, doc_ids, mode=mode, backend=backend)
        out.backward(dout.to(device, torch.bfloat16))
        ref_in = [t.detach().double().requires_grad_() for t in inputs]
        ref = dense_reference_attention(*ref_in, doc_ids.to(device), mode)
        ref.backward(dout.to(device).double())
        got, want = (out, *(t.grad for t in inputs)), (ref, *(t.grad for t in ref_in))
        errors = [_rel(g, r) for g, r in zip(got, want)]
        worst[mode] = max(errors)
    return worst


def _timer(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
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


def _attention_inputs(seq_len: int, device, dtype, heads: int, heads_kv: int):
    gen = torch.Generator().manual_seed(1)
    shapes = [(seq_len, 1, heads, 128), (seq_len, 1, heads_kv, 128), (seq_len, 1, heads_kv, 128)]
    return [torch.randn(s, generator=gen).to(device, dtype).requires_grad_() for s in shapes]


def attention_speed(seq_len: int, device, backend: str, heads: int, heads_kv: int, repeat: int) -> dict:
    """Seconds of anchor, causal (this engine) and SDPA causal, forward and forward+backward."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    doc_ids = realistic_doc_ids(seq_len)
    q, k, v = _attention_inputs(seq_len, device, dtype, heads, heads_kv)
    rows = {}
    for mode in ("anchor", "causal"):
        plan = build_attention_plan(doc_ids, mode, device=device)  # once per micro-batch, as in training
        call = lambda plan=plan: anchor_cp_attention(q, k, v, plan=plan, backend=backend)  # noqa: E731
        rows[mode] = _fwd_bwd_times(call, device, repeat) | {"visible": visible_pairs(doc_ids, mode)}
    group = heads // heads_kv
    qs, ks, vs = (t.detach().permute(1, 2, 0, 3).requires_grad_() for t in (q, k, v))  # [1, h, S, d]
    ks_full, vs_full = (t.repeat_interleave(group, 1).detach().requires_grad_() for t in (ks, vs))
    sdpa = lambda: torch.nn.functional.scaled_dot_product_attention(qs, ks_full, vs_full, is_causal=True)  # noqa: E731
    rows["sdpa_causal"] = _fwd_bwd_times(sdpa, device, repeat) | {"visible": rows["causal"]["visible"]}
    return rows


def _fwd_bwd_times(call, device, repeat: int) -> dict:
    with torch.no_grad():
        fwd = timed(call, device, repeat)
    both = timed(lambda: call().sum().backward(), device, repeat)
    return {"fwd": fwd, "fwd_bwd": both}


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
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=420)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout)[-600:]}
    records = [json.loads(line) for line in log_path.read_text().splitlines() if '"loss"' in line]
    last = records[-1]
    return {key: last[key] for key in ("tokens_per_s", "tflops_per_gpu", "mfu", "loss")}


def _speed_rows(results: dict, rate: float) -> list[str]:
    lines = []
    for seq_len, rows in results["speed"].items():
        for name, row in rows.items():
            for key, flops in (("fwd", 4), ("fwd_bwd", 14)):
                tflops = flops * 128 * results["heads"] * row["visible"] / row[key] / 1e12
                share = 100 * tflops * 1e12 / rate
                lines.append(
                    f"{seq_len:>7} {name:>12} {key:>8} {1e3 * row[key]:10.1f} ms {tflops:8.1f} TFLOP/s "
                    f"{share:6.1f}% of matmul  time anchor/this {rows['anchor'][key] / row[key]:5.2f}"
                )
    return lines


def final_table(results: dict) -> str:
    """The summary printed last."""
    rate = results["matmul_rate"]
    lines = [f"device {results['device']}, torch {torch.__version__}, matmul {rate / 1e12:.0f} TFLOP/s"]
    lines += [f"backend {name}: {status}" for name, status in results["backends"].items()]
    for name, errors in results["exactness"].items():
        worst = max(errors.values())
        lines.append(f"exact {name}: worst rel. error {worst:.2e} ({'PASS' if worst <= 2e-2 else 'FAIL'})")
    lines.append(f"{'S':>7} {'kernel':>12} {'pass':>8} {'time':>13} {'visible-pair rate':>16}")
    lines += _speed_rows(results, rate)
    step = results["training_step"]
    if "error" in step:
        lines.append(f"training step: failed: {step['error']}")
    else:
        mfu = "-" if step["mfu"] is None else f"{100 * step['mfu']:.1f}%"  # the trainer's own peak table
        rate_line = f"{step['tokens_per_s']:.0f} tokens/s, {step['tflops_per_gpu']:.1f} TFLOP/s"
        lines.append(f"training step: {rate_line}, MFU {mfu}")
    return "\n".join(lines)


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu_check.log and gpu_check.json")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (checks the script)")
    parser.add_argument("--seqs", type=int, nargs="+", default=[32768, 65536, 131072])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    statuses = {name: gpu_backend_status(name, device, torch.bfloat16) for name in GPU_BACKENDS}
    runnable = [name for name, (ok, _) in statuses.items() if ok] or (["sdpa_cpu"] if args.cpu_smoke else [])
    results = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    results["backends"] = {name: "runs" if ok else f"off: {why}" for name, (ok, why) in statuses.items()}
    small = 512 if args.cpu_smoke else 2048
    results["exactness"] = {name: exactness(name, device, small) for name in runnable}
    log(args.out, f"exactness: {results['exactness']}")
    results["matmul_rate"] = matmul_rate(device, 1024 if args.cpu_smoke else 8192)
    heads, heads_kv = (4, 1) if args.cpu_smoke else (16, 4)
    seqs = [1024, 2048] if args.cpu_smoke else args.seqs
    best = runnable[0] if runnable else "torch"
    results["heads"] = heads
    results["speed"] = {}
    for seq_len in seqs:
        results["speed"][seq_len] = attention_speed(seq_len, device, best, heads, heads_kv, args.repeat)
        log(args.out, f"S={seq_len}: {results['speed'][seq_len]}")
    results["training_step"] = training_step(args.out, args.cpu_smoke)
    results["seconds"] = time.perf_counter() - start
    if args.out is not None:
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    log(args.out, "\n" + final_table(results) + f"\n({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
