"""The bf16 RoPE deviation diagnostic: its pieces against independent references, and the tool end to end."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import pytest
import torch
from eval_harness import TINY_MODEL, is_png, process_group, run_tool  # noqa: F401 (fixture)

from megatron_anchor.attention.reference import dense_reference_attention
from megatron_anchor.evaluation.rope_deviation import (
    PATHS,
    REFERENCE_DELTA,
    attach_probes,
    attention_probs,
    diagnostic_sequences,
    document_ids,
    run_shifts,
    shift_deviation,
)
from megatron_anchor.rope import apply_rotary_fp32, default_inv_freq
from megatron_anchor.rope.invariance import megatron_unfused_rope
from tests.disk_limits import file_size_limit


@pytest.mark.parametrize("mode", ["causal", "intra_doc", "anchor"])
def test_attention_probs_times_v_is_dense_reference_attention(mode):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(24, 2, h, 8, generator=gen) for h in (4, 2, 2))  # [s, b, h, d], GQA 4 over 2
    doc_ids = torch.tensor([[0] + [1] * 9 + [2] * 14, [0] + [1] * 5 + [2] * 8 + [3] * 10])
    probs = attention_probs(q, k, doc_ids, mode)  # [b, h, s, s]
    out = torch.einsum("bhij,jbhd->ibhd", probs.double(), v.double().repeat_interleave(2, dim=2))
    torch.testing.assert_close(out, dense_reference_attention(q, k, v, doc_ids, mode), atol=1e-5, rtol=1e-5)


def _fp64_rotation(t: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor) -> torch.Tensor:
    """Half-split RoPE of ``t [s, b, h, d]`` at ``positions [b, s]`` entirely in fp64."""
    angles = (positions.double()[..., None] * inv_freq).transpose(0, 1)[:, :, None]  # [s, b, 1, d/2]
    x1, x2 = t.double().chunk(2, dim=-1)
    return torch.cat([x1 * angles.cos() - x2 * angles.sin(), x2 * angles.cos() + x1 * angles.sin()], dim=-1)


def test_megatron_unfused_rope_per_sample_positions_and_bf16_cos_sin():
    gen = torch.Generator().manual_seed(1)
    t = torch.randn(64, 2, 3, 32, generator=gen)  # [s, b, h, d]
    positions = torch.stack([torch.arange(64) + 1000, torch.arange(64) + 7])  # [b, s], rows differ
    inv_freq = default_inv_freq(10000.0, 32)
    exact = _fp64_rotation(t, positions, inv_freq)
    torch.testing.assert_close(
        megatron_unfused_rope(t, positions, inv_freq).double(), exact, atol=2e-4, rtol=0
    )
    # In bf16 its cos/sin are cast to bf16 before the multiply: further from exact than the fp32 RoPE.
    tb = t.bfloat16()
    err_megatron = (
        megatron_unfused_rope(tb, positions, inv_freq).double() - _fp64_rotation(tb, positions, inv_freq)
    ).abs()
    err_fp32 = (
        apply_rotary_fp32(tb, positions, inv_freq, backend="torch").double()
        - _fp64_rotation(tb, positions, inv_freq)
    ).abs()
    assert err_megatron.mean() > 1.5 * err_fp32.mean()
    # Partial rotary: channels past the rotary dimension pass through.
    partial = megatron_unfused_rope(t, positions, default_inv_freq(10000.0, 16))
    torch.testing.assert_close(partial[..., 16:], t[..., 16:], atol=0, rtol=0)


def test_shift_deviation_matches_explicit_loops():
    gen = torch.Generator().manual_seed(2)
    groups, n, h, s = 3, 2, 2, 5
    probs = torch.rand(groups * n, h, s, s, generator=gen).tril().double()
    got = shift_deviation(probs, groups)  # [groups-1, 3]
    for g in range(1, groups):
        d = first = first_part = 0.0
        for seq in range(n):
            for head in range(h):
                for i in range(s):
                    row, ref = probs[g * n + seq, head, i], probs[seq, head, i]
                    diff = [abs(float(row[j] - ref[j])) for j in range(s)]
                    d += sum(diff) / (i + 1)
                    first += diff[0]
                    first_part += diff[0] / (i + 1)
        assert got[g - 1].tolist() == pytest.approx([d / n, first / n, first_part / n], rel=1e-12)


def test_probe_deviation_matches_probabilities_rebuilt_in_fp64(process_group):  # noqa: F811
    """One layer: q, k before RoPE do not depend on positions, so D can be rebuilt from one capture."""
    from megatron_anchor.model import AnchorGPTConfig, build_anchor_gpt

    torch.manual_seed(0)
    cfg = AnchorGPTConfig(
        num_layers=1,
        hidden_size=64,
        ffn_hidden_size=128,
        num_attention_heads=4,
        num_query_groups=2,
        vocab_size=128,
        seq_length=48,
        attention_mode="anchor",
        init_method_std=0.2,
    )
    model = build_anchor_gpt(cfg).eval()
    tokens = torch.randint(1, 128, (2, 48), generator=torch.Generator().manual_seed(5))
    recorder = attach_probes(model)
    probe = model.decoder.layers[0].self_attention.core_attention
    captured = {}
    probe.register_forward_hook(lambda m, args, out: captured.update(q=args[0], k=args[1]))
    stats = run_shifts(model, recorder, tokens, 3, "bf16_fp32_rope", [REFERENCE_DELTA, 5, 300])
    assert stats[REFERENCE_DELTA]["D"] == 0.0
    q, k = captured["q"][:, :2], captured["k"][:, :2]  # pre-RoPE q, k (bf16) of the reference group
    doc_ids = document_ids(48, 3).expand(2, 48)
    index = torch.arange(48).expand(2, 48)

    def probs_at(delta):
        rq = apply_rotary_fp32(q, index + delta, probe.setup.inv_freq, backend="torch")
        rk = apply_rotary_fp32(k, index + delta, probe.setup.inv_freq, backend="torch")
        rk = rk.double().repeat_interleave(2, dim=2)  # 4 query heads over 2 key/value heads
        logits = torch.einsum("ibhd,jbhd->bhij", rq.double(), rk) / math.sqrt(16)
        same_doc_or_anchor = (doc_ids[:, :, None] == doc_ids[:, None, :]) | (torch.arange(48) == 0)
        mask = torch.ones(48, 48, dtype=torch.bool).tril() & same_doc_or_anchor
        return logits.masked_fill(~mask[:, None], float("-inf")).softmax(-1)

    for delta in (5, 300):
        diff = (probs_at(delta) - probs_at(REFERENCE_DELTA)).abs()  # [b, h, s, s]
        want = (diff.sum(-1) / torch.arange(1, 49)).sum((1, 2)).mean()
        assert stats[delta]["D"] == pytest.approx(float(want), rel=1e-3)
        assert stats[delta]["D_first"] == pytest.approx(float(diff[..., 0].sum((1, 2)).mean() / 48), rel=1e-3)


def test_tool_shows_bf16_deviation_above_fp32(tmp_path):
    out = tmp_path / "deviation"
    proc = run_tool(
        "bf16_rope_deviation.py",
        [
            *TINY_MODEL,
            "--vocab-size",
            "256",
            "--seq-length",
            "96",
            "--deltas",
            "0,1,16,50,2000",
            "--lengths",
            "64,128",
            "--batch-size",
            "2",
            "--out-dir",
            str(out),
        ],
    )
    assert "delta1 sweep against delta2=16, anchor attention" in proc.stdout
    assert "first-token deviation as T grows" in proc.stdout
    assert is_png(out / "rope_deviation_sweep.png") and is_png(out / "rope_deviation_growth.png")
    results = json.loads((out / "rope_deviation.json").read_text())
    assert set(results["sweep"]) == {"causal", "anchor"}
    for mode in ("causal", "anchor"):
        sweep, growth = results["sweep"][mode], results["growth"][mode]
        assert set(sweep) == set(PATHS)
        for delta in ("0", "1", "50", "2000"):
            fp32 = sweep["fp32"][delta]["D"]
            for path in ("bf16_fp32_rope", "bf16_megatron_rope"):
                assert sweep[path][delta]["D"] > 100 * fp32 > 0, (mode, path, delta)
        assert all(sweep[p]["16"]["D"] == 0.0 for p in PATHS)  # the reference against itself
        for length in ("64", "128"):
            for path in ("bf16_fp32_rope", "bf16_megatron_rope"):
                assert growth[path][length]["D_first"] > 10 * growth["fp32"][length]["D_first"]
    # The default sample has several documents: the anchor and causal masks differ, so do their deviations.
    assert results["sweep"]["anchor"]["fp32"]["50"] != results["sweep"]["causal"]["fp32"]["50"]


def test_a_write_that_fails_after_the_evaluation_is_one_line(tmp_path):
    """--out-dir passed its start-up probe, then the results do not fit (a file size limit): one line naming
    --out-dir and the error, exit 1, no traceback."""
    out = tmp_path / "deviation"
    sizes = ["--seq-length", "64", "--deltas", "0,1,16", "--lengths", "64", "--batch-size", "2"]
    flags = [*TINY_MODEL, "--vocab-size", "256", *sizes, "--out-dir", str(out)]
    proc = run_tool("bf16_rope_deviation.py", flags, expect_fail=True, preexec_fn=file_size_limit(8192))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # after the progress bar; the free space may change since
    assert re.fullmatch(
        re.escape(f"error: --out-dir {out}: writing the results failed: [Errno 27 EFBIG] File too large: ")
        + re.escape(f"'{out}' (")
        + r"[0-9.]+ [KMGT]?i?B"
        + re.escape(f" free on {out})"),
        last,
    ), last


def test_a_damaged_checkpoint_is_one_line_naming_the_file(tmp_path):
    """A truncated shard of --load: the checkpoint's own one-line error, exit 1, no traceback."""
    from tests.training.train_harness import reference_run

    ckpt = tmp_path / "ckpt"
    shutil.copytree(reference_run()[0], ckpt)
    shard = ckpt / "iter_0000006" / "__0_0.distcp"
    size = shard.stat().st_size
    os.truncate(shard, 500)
    flags = ["--load", str(ckpt), "--deltas", "0,1,16", "--out-dir", str(tmp_path / "out")]
    proc = run_tool("bf16_rope_deviation.py", flags, expect_fail=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: checkpoint file {shard} has 500 bytes, {size} were written (truncated or overwritten); load "
        f"the previous checkpoint instead: --load {ckpt / 'iter_0000003'}"
    )


def test_sequences_start_with_the_anchor_and_follow_the_text():
    text = list(range(100, 130))  # 30 ids, cycled for 3 x 19
    seqs = diagnostic_sequences(3, 20, 7, text_ids=text)
    assert seqs[:, 0].tolist() == [7, 7, 7]
    assert seqs[:, 1:].flatten().tolist() == (text * 2)[:57]
    random = diagnostic_sequences(2, 50, 1, vocab_size=40, seed=4)
    assert torch.equal(random, diagnostic_sequences(2, 50, 1, vocab_size=40, seed=4))
    assert 1 <= int(random[:, 1:].min()) and int(random.max()) < 40
    assert document_ids(9, 2).tolist() == [0, 1, 1, 1, 1, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="num-documents"):
        document_ids(9, 9)
