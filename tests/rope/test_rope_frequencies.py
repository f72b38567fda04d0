"""Inverse frequencies of every strategy against transformers' rope initialisers (independent reference)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from megatron_anchor.rope import RopeScaling, compute_inv_freq, rotary_dim_for

transformers = pytest.importorskip("transformers")


def hf_inv_freq(
    rope_parameters: dict, base: float, head_dim: int, max_pos: int = 4096, partial: float = 1.0,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    """transformers' own inverse frequencies and attention factor for a tiny Llama config (no download)."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    params = {"rope_theta": base, **rope_parameters}
    if partial < 1.0:
        params["partial_rotary_factor"] = partial
    config = LlamaConfig(
        hidden_size=2 * head_dim, num_attention_heads=2, head_dim=head_dim,
        max_position_embeddings=max_pos, rope_parameters=params,
    )
    if params["rope_type"] == "default":
        return LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    return ROPE_INIT_FUNCTIONS[params["rope_type"]](config, "cpu", seq_len=seq_len)


def ours(
    rope_parameters: dict, base: float, head_dim: int, max_pos: int = 4096, partial: float = 1.0,
    seq_len: int | None = None,
) -> tuple[torch.Tensor, float]:
    scaling = RopeScaling.from_hf(rope_parameters, max_position_embeddings=max_pos)
    return compute_inv_freq(base, rotary_dim_for(head_dim, partial), scaling, seq_len=seq_len)


LONG = [1.0 + 0.37 * k for k in range(48)]
SHORT = [1.0 + 0.01 * k for k in range(48)]
CASES = [
    ({"rope_type": "default"}, 10000.0, 128, {}),
    ({"rope_type": "default"}, 1e6, 64, {}),
    ({"rope_type": "linear", "factor": 4.0}, 10000.0, 128, {}),
    ({"rope_type": "linear", "factor": 2.0}, 10000.0, 128, {"partial": 0.5}),
    ({"rope_type": "dynamic", "factor": 2.0}, 10000.0, 128, {}),
    ({"rope_type": "dynamic", "factor": 2.0}, 10000.0, 128, {"seq_len": 16384}),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096}, 1e6, 128, {}),
    ({"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "truncate": False,
      "beta_fast": 16.0, "beta_slow": 2.0}, 10000.0, 64, {}),
    ({"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
      "mscale_all_dim": 0.707}, 10000.0, 64, {}),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048,
      "attention_factor": 1.25}, 10000.0, 128, {"partial": 0.75}),
    ({"type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096}, 10000.0, 64, {}),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, 500000.0, 128, {}),
    ({"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, 500000.0, 64, {"partial": 0.5}),
    ({"rope_type": "longrope", "factor": 32.0, "original_max_position_embeddings": 4096,
      "long_factor": LONG, "short_factor": SHORT}, 10000.0, 96, {}),
    ({"rope_type": "longrope", "factor": 32.0, "original_max_position_embeddings": 4096,
      "long_factor": LONG, "short_factor": SHORT}, 10000.0, 96, {"seq_len": 8192}),
    ({"type": "longrope", "original_max_position_embeddings": 4096, "long_factor": LONG,
      "short_factor": SHORT}, 10000.0, 96, {"max_pos": 131072, "seq_len": 131072}),
]


@pytest.mark.parametrize("rope_parameters, base, head_dim, extra", CASES)
def test_matches_transformers(rope_parameters: dict, base: float, head_dim: int, extra: dict) -> None:
    expected, expected_factor = hf_inv_freq(rope_parameters, base, head_dim, **extra)
    got, factor = ours(rope_parameters, base, head_dim, **extra)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    torch.testing.assert_close(got, expected.double(), rtol=1e-6, atol=0)
    assert factor == pytest.approx(float(expected_factor), rel=1e-6)


def test_yarn_scales_between_extrapolation_and_pi() -> None:
    scaling = RopeScaling("yarn", factor=4.0, original_max_position_embeddings=4096)
    inv, mscale = compute_inv_freq(10000.0, 128, scaling)
    theta, _ = compute_inv_freq(10000.0, 128)
    assert inv[0] == theta[0] and inv[-1] == pytest.approx(theta[-1] / 4)
    assert mscale == pytest.approx(0.1 * math.log(4) + 1)


def test_ntk_aware_base() -> None:
    scaling = RopeScaling("ntk", factor=4.0)
    inv, mscale = compute_inv_freq(10000.0, 128, scaling)
    new_base = 10000.0 * 4.0 ** (128 / 126)
    expected = torch.tensor([new_base ** (-2 * k / 128) for k in range(64)], dtype=torch.float64)
    torch.testing.assert_close(inv, expected, rtol=1e-12, atol=0)
    assert mscale == 1.0
    with pytest.raises(ValueError, match="static NTK"):
        scaling.to_hf()


def test_dprope_as_hf_longrope() -> None:
    scaling = RopeScaling(
        "dprope", factor=4.0, original_max_position_embeddings=4096, interpolated_pairs=[40, 3, 63],
        rotary_dim=128,
    )
    hf = scaling.to_hf()
    expected, attention = hf_inv_freq(hf, 10000.0, 128, seq_len=16384)
    got, mscale = compute_inv_freq(10000.0, 128, scaling)
    torch.testing.assert_close(got, expected.double(), rtol=1e-6, atol=0)
    assert mscale == attention == 1.0
    theta, _ = compute_inv_freq(10000.0, 128)
    assert torch.equal(got != theta, torch.isin(torch.arange(64), torch.tensor([3, 40, 63])))
    with pytest.raises(ValueError, match="rotary dim 128, not 64"):
        compute_inv_freq(10000.0, 64, scaling)


SCALED = [case[0] for case in CASES if case[0].get("rope_type") != "default"]


@pytest.mark.parametrize("rope_parameters", SCALED)
def test_hf_round_trip_and_json(rope_parameters: dict, tmp_path) -> None:
    scaling = RopeScaling.from_hf(rope_parameters, max_position_embeddings=32768)
    assert RopeScaling.from_hf(scaling.to_hf()) == scaling
    path = tmp_path / "rope.json"
    scaling.save_json(path)
    assert RopeScaling.load_json(path) == scaling
    path.write_text(json.dumps(scaling.to_hf()))
    assert RopeScaling.load_json(path) == scaling


def test_from_hf_edge_cases() -> None:
    assert RopeScaling.from_hf(None) is None
    assert RopeScaling.from_hf({"rope_type": "default", "rope_theta": 1e6}) is None
    assert RopeScaling.from_hf({"type": "linear", "factor": 2.0}) == RopeScaling("linear", factor=2.0)
    with pytest.raises(ValueError, match="unsupported rope_scaling keys \\['mrope_section'\\]"):
        RopeScaling.from_hf({"rope_type": "default", "mrope_section": [16, 24, 24]})
    with pytest.raises(ValueError, match="needs original_max_position_embeddings"):
        RopeScaling.from_hf({"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(ValueError, match="is not one of"):
        RopeScaling("xpos")
    with pytest.raises(ValueError, match="has 2 entries"):
        scaling = RopeScaling("longrope", 2.0, 4096, long_factor=[1, 2], short_factor=[1, 1])
        compute_inv_freq(10000.0, 8, scaling)


def test_rotary_dim_for() -> None:
    assert rotary_dim_for(128) == 128 and rotary_dim_for(128, 0.5) == 64
    with pytest.raises(ValueError, match="--rotary-percent 0.3 of head dim 10 gives 3"):
        rotary_dim_for(10, 0.3)
