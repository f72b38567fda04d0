"""Throughput arithmetic (model FLOPs of the masked attention) and the step log (stdout, JSONL, TB)."""

from __future__ import annotations

import json
import resource

import torch

from megatron_anchor.attention.reference import visible_pairs  # noqa: F401  (re-exported)


def dense_params_per_token(
    num_layers: int, hidden: int, ffn: int, heads: int, groups: int, vocab: int
) -> int:
    """Matmul parameters one token passes through (qkv, proj, SwiGLU MLP, output layer)."""
    head_dim = hidden // heads
    qkv = hidden * (hidden + 2 * groups * head_dim)
    layer = qkv + hidden * hidden + 3 * hidden * ffn
    return num_layers * layer + hidden * vocab


def step_flops(dense_params: int, tokens: int, pairs: int, num_layers: int, hidden: int) -> float:
    """Training FLOPs (forward + backward = 3 x forward) of one step: matmuls plus QK^T and AV."""
    return 6.0 * dense_params * tokens + 12.0 * num_layers * hidden * pairs


def peak_memory_gib() -> float:
    """Peak device memory (GPU) or peak resident memory of this process (CPU), GiB."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class StepLogger:
    """Rank 0's log: a line per logged step on stdout, a JSON object per line in ``--log-jsonl``."""

    def __init__(self, enabled: bool, jsonl_path: str | None, tensorboard_dir: str | None) -> None:
        self.enabled = enabled
        self.jsonl = open(jsonl_path, "a") if enabled and jsonl_path else None  # noqa: SIM115
        self.tb = None
        if enabled and tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self.tb = SummaryWriter(tensorboard_dir)

    def log(self, record: dict) -> None:
        """Emit one record (keys: step, loss, lr, grad_norm, tokens_per_s, ...)."""
        if not self.enabled:
            return
        parts = [
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {'-' if v is None else v}"
            for k, v in record.items()
        ]
        print(" | ".join(parts), flush=True)
        if self.jsonl:
            self.jsonl.write(json.dumps(record) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        """Flush and close the files."""
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()
