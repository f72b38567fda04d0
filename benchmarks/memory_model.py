"""The accounting of ``memory.py``, on paper: activation bytes a rank keeps per token, parameter, gradient and
optimizer state per rank, and its projection on the README's recipes against an H100 80 GB.

Imported by ``memory.py`` beside it (``from memory_model import ...``); the package never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB, GiB = 2**20, 2**30
CHUNK = 1024  # --cross-entropy-chunk-size measured and projected, as in examples/


@dataclass(frozen=True)
class Shape:
    """A Llama-family model's shape."""

    layers: int
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    vocab: int

    @property
    def params(self) -> int:
        """Parameters: untied embeddings, attention, SwiGLU MLP, two norms per layer, final norm."""
        kv = 2 * self.kv_heads * self.hidden // self.heads
        layer = self.hidden * (2 * self.hidden + kv) + 3 * self.hidden * self.ffn + 2 * self.hidden
        return self.layers * layer + 2 * self.vocab * self.hidden + self.hidden


BENCH = Shape(layers=4, hidden=256, ffn=688, heads=4, kv_heads=2, vocab=2048)


def layer_elements_per_token(shape: Shape, tp: int, sp: bool, recompute: str | None) -> float:
    """Activation elements one decoder layer keeps for backward per token of this rank's sequence.

    Sharded by SP: each RMSNorm's input and normalised input, the qkv and fc1 inputs (6h). Split by TP:
    the qkv output, rotated q and k, the attention output and proj input (4h + 3 kv), the SwiGLU MLP's
    fc1 output, gate, product and fc2 input (5 ffn). Neither: the RoPE cos/sin (2 head_dim). Selective
    recompute keeps the attention's inputs and output only; full recompute keeps the layer input.
    """
    h, d = shape.hidden, shape.hidden // shape.heads
    kv, seq_shard = shape.kv_heads * d, tp if sp else 1
    if recompute == "full":
        return h / seq_shard
    if recompute == "selective":
        return 6 * h / seq_shard + (2 * h + 2 * kv + 5 * shape.ffn) / tp
    return 6 * h / seq_shard + (4 * h + 3 * kv + 5 * shape.ffn) / tp + 2 * d


def activation_bytes(
    shape: Shape, tokens: int, tp: int, sp: bool, recompute: str | None, act_bytes: int, chunk: int = 0
) -> tuple[float, float]:
    """(kept when forward ends, peak) activation bytes of one rank holding ``tokens`` of the sequence.

    Beyond the layers, forward keeps the final norm's tensors and the output layer's input (3h, sharded by
    SP) and, without ``--cross-entropy-chunk-size`` (``chunk`` 0), the vocabulary-parallel cross-entropy's
    fp32 softmax (vocab / tp, 4 bytes; its backward works in place). With chunks, backward recomputes one
    chunk's logits at a time (``chunk`` sequence positions: fp32 logits, softmax and gradient).
    The peak is the larger of that moment and the backward of the last layer: every layer's kept tensors,
    the layer recomputed under full recompute, and the gradients of the hidden state and of fc1's output.
    """
    seq_shard = tp if sp else 1
    kept_per_layer = layer_elements_per_token(shape, tp, sp, recompute)
    head = act_bytes * 3 * shape.hidden / seq_shard + (0 if chunk else 4 * shape.vocab / tp)
    kept = tokens * (act_bytes * shape.layers * kept_per_layer + head)
    head_backward = kept + min(chunk, tokens) * 3 * 4 * shape.vocab / tp
    recomputed = layer_elements_per_token(shape, tp, sp, None) if recompute == "full" else 0.0
    grads = shape.hidden / seq_shard + 2 * shape.ffn / tp
    in_backward = tokens * act_bytes * (shape.layers * kept_per_layer + recomputed + grads)
    return kept, max(head_backward, in_backward)


def state_bytes(shape: Shape, tp: int, shards: int, bf16: bool) -> dict:
    """Parameters, gradients and Adam state per rank: fp32 masters, FSDP2 over ``shards`` DP x CP ranks.

    FSDP2 keeps every layer's gathered parameters from its forward to its backward (reshard after forward
    off), in bf16 under the bf16 policy.
    """
    p = shape.params / tp
    return {
        "params": 4 * p / shards + (2 if bf16 else 4) * p,
        "grads": 4 * p / shards,
        "optimizer": 8 * p / shards,
    }


LLAMA2_7B = Shape(layers=32, hidden=4096, ffn=11008, heads=32, kv_heads=32, vocab=32000)
LLAMA3_8B = Shape(layers=32, hidden=4096, ffn=14336, heads=32, kv_heads=8, vocab=128256)
LLAMA3_70B = Shape(layers=80, hidden=8192, ffn=28672, heads=64, kv_heads=8, vocab=128256)
RECIPES = [  # name, shape, S, TP, CP, DP (as in examples/: 4 or 8 nodes of 8 GPUs), full recompute
    ("Llama-2-7B 64K", LLAMA2_7B, 65536, 2, 4, 4),
    ("Llama-3-8B 128K", LLAMA3_8B, 131072, 2, 8, 4),
    ("Llama-3-8B 256K", LLAMA3_8B, 262144, 2, 8, 4),
    ("Llama-3-8B 256K", LLAMA3_8B, 262144, 2, 16, 2),
    ("Llama-3-70B 64K", LLAMA3_70B, 65536, 8, 4, 2),
]
H100_BYTES = 81559 * MiB  # what nvidia-smi reports for an H100 80 GB


def print_table(header: list[str], rows: list[list]) -> None:
    """Columns right-aligned to their widest cell; floats with one decimal."""
    cells = [header] + [[f"{c:.1f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def print_projection() -> None:
    """The accounting applied to the recipes (FSDP2 over DP x CP, bf16 activations) against an H100."""
    print(f"\nProjection per GPU, GiB; H100 80 GB = {H100_BYTES / GiB:.1f} GiB. FSDP2 over DP x CP:")
    states, table = [], []
    for name, shape, seq, tp, cp, dp in RECIPES:
        fp32, bf16 = (state_bytes(shape, tp, dp * cp, bf16=b) for b in (False, True))
        state = [fp32["params"], bf16["params"], bf16["grads"], bf16["optimizer"]]
        states.append([name, f"{tp}x{cp}x{dp}", shape.params / 1e9, *(x / GiB for x in state)])
        for recompute in ("full", "selective", None):
            act = [activation_bytes(shape, seq // cp, tp, sp, recompute, 2, CHUNK)[1] for sp in (False, True)]
            total = [sum(bf16.values()) + a for a in act]
            row = [name, seq // cp, recompute or "none", *(a / GiB for a in act), f"{act[1] / act[0]:.2f}x"]
            table.append(row + [t / GiB for t in total] + [f"{t / H100_BYTES:.0%}" for t in total])
    header = ["recipe", "TPxCPxDP", "B params", "params fp32", "params bf16 policy", "grads", "optim"]
    print_table(header, states)
    print("\nActivations at the peak and totals (bf16 policy), without / with --sequence-parallel:")
    header = ["recipe", "tokens/GPU", "recompute", "activ", "activ SP", "SP/no SP", "total", "total SP"]
    print_table(header + ["of H100", "of H100 SP"], table)
