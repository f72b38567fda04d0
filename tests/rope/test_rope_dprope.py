"""DPRoPE's angle distributions against numpy histograms, its choice on LLaMA-2's RoPE, and the CLI tool."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from megatron_anchor.rope import (
    DPROPE_EPS,
    angle_distribution,
    choose_interpolated_pairs,
    compute_inv_freq,
    pair_disturbance,
    parse_rope_scaling,
    rope_distribution_report,
)

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "rope_distribution.py"


def numpy_distribution(theta: float, length: int, bins: int) -> np.ndarray:
    """SPEC section 3 written out with numpy: histogram of (m * theta) mod 2*pi, + eps, / length."""
    angles = np.mod(np.arange(length, dtype=np.float64) * theta, 2 * math.pi)
    counts, _ = np.histogram(angles, bins=bins, range=(0.0, 2 * math.pi))
    return (counts + DPROPE_EPS) / length


def test_angle_distribution_matches_numpy() -> None:
    inv_freq, _ = compute_inv_freq(10000.0, 16)
    got = angle_distribution(inv_freq, 3000, bins=36)
    for k in range(8):
        expected = numpy_distribution(float(inv_freq[k]), 3000, 36)
        np.testing.assert_allclose(got[k].numpy(), expected, rtol=1e-14, atol=0)
        assert got[k].sum().item() == pytest.approx(1 + 36 * DPROPE_EPS / 3000)
    theta = float(inv_freq[5])
    p, q = numpy_distribution(theta, 3000, 36), numpy_distribution(theta / 2, 6000, 36)
    expected_kl = float(np.sum(p * np.log(p / q)))
    got_kl = pair_disturbance(got[5:6], angle_distribution(inv_freq[5:6] / 2, 6000, 36))[0].item()
    assert got_kl == pytest.approx(expected_kl, rel=1e-6)


@pytest.mark.parametrize(
    "target, dims, max_ratio",
    [(8192, 80, 0.35), (16384, 64, 0.75)],  # the DPRoPE paper reports cuts of up to 72% (8K) and 32% (16K)
)
def test_dprope_on_llama2_cuts_disturbance_below_pi(target: int, dims: int, max_ratio: float) -> None:
    report = rope_distribution_report(10000.0, 128, 4096, target, bins=360, interpolate_dims=dims)
    d = report.disturbance
    assert len(report.dprope.interpolated_pairs) == dims // 2
    assert d["dprope"] < max_ratio * d["pi"]
    assert d["dprope"] < min(d["extrapolation"], d["ntk"], d["yarn"])
    # Independently: the saved strategy's own frequencies give the same disturbance.
    inv_freq, _ = compute_inv_freq(10000.0, 128, report.dprope)
    original = angle_distribution(report.inv_freq["original"], 4096)
    direct = pair_disturbance(original, angle_distribution(inv_freq, target)).mean().item()
    assert direct == pytest.approx(d["dprope"], rel=1e-12)


def test_choice_without_a_count_takes_every_helpful_pair() -> None:
    report = rope_distribution_report(10000.0, 64, 2048, 8192, bins=90)
    gain = report.pair_disturbance["extrapolation"] - report.pair_disturbance["pi"]
    assert report.dprope.interpolated_pairs == [k for k in range(32) if gain[k] > 0]
    best = torch.minimum(report.pair_disturbance["extrapolation"], report.pair_disturbance["pi"])
    torch.testing.assert_close(report.pair_disturbance["dprope"], best, rtol=0, atol=0)


def test_choice_validates_dims() -> None:
    gain = torch.tensor([0.3, -0.1, 0.2, 0.0])
    assert choose_interpolated_pairs(gain, 4) == [0, 2]
    for bad in (3, 10, -2):
        with pytest.raises(ValueError, match="--interpolate-dims must be an even number"):
            choose_interpolated_pairs(gain, bad)


def test_tool_json_plot_save(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [
        sys.executable, str(TOOL), "--rotary-base", "10000", "--head-dim", "128", "--original-length", "4096",
        "--target-length", "16384", "--bins", "360", "--interpolate-dims", "64", "--json",
        "--plot", str(tmp_path / "out.png"), "--save", str(tmp_path / "rope.json"),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    result = json.loads(done.stdout)
    assert set(result["disturbance"]) == {"extrapolation", "pi", "ntk", "yarn", "dprope"}
    assert len(result["dprope_pairs"]) == 32
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scaling = parse_rope_scaling(str(tmp_path / "rope.json"))
    assert scaling.rope_type == "dprope" and scaling.interpolated_pairs == result["dprope_pairs"]
    assert scaling.factor == 4.0 and scaling.original_max_position_embeddings == 4096


def test_tool_reports_bad_flags(capsys: pytest.CaptureFixture) -> None:
    spec = importlib.util.spec_from_file_location("rope_distribution_tool", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = ["--original-length", "4096", "--target-length", "8192", "--head-dim", "64"]
    assert tool.main([*argv, "--interpolate-dims", "81"]) == 2
    assert "--interpolate-dims must be an even number" in capsys.readouterr().err
    assert tool.main([*argv, "--interpolate-dims", "20"]) == 0
    assert "DPRoPE interpolates 10 pairs" in capsys.readouterr().out
