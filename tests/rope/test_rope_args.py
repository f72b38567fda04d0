"""--rotary-* and --rope-scaling flags: parsing, files, and errors that name the flag."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from megatron_anchor.rope import RopeScaling, add_rope_args, rope_scaling_from_args


def parse(*argv: str) -> argparse.Namespace:
    return add_rope_args(argparse.ArgumentParser()).parse_args(list(argv))


def test_defaults_are_megatrons() -> None:
    args = parse()
    assert (args.rotary_base, args.rotary_percent, args.rotary_interleaved) == (10000.0, 1.0, False)
    assert rope_scaling_from_args(args) is None


def test_inline_json_file_and_hf_form(tmp_path: Path) -> None:
    yarn = '{"rope_type": "yarn", "factor": 4, "original_max_position_embeddings": 4096}'
    expected = RopeScaling("yarn", factor=4.0, original_max_position_embeddings=4096)
    assert rope_scaling_from_args(parse("--rope-scaling", yarn)) == expected
    path = tmp_path / "rope.json"
    expected.save_json(path)
    assert rope_scaling_from_args(parse("--rope-scaling", str(path))) == expected
    legacy = '{"type": "linear", "factor": 2.0}'
    assert rope_scaling_from_args(parse("--rope-scaling", legacy)) == RopeScaling("linear", factor=2.0)
    pi = parse("--rotary-seq-len-interpolation-factor", "4")
    assert rope_scaling_from_args(pi) == RopeScaling("linear", factor=4.0)


@pytest.mark.parametrize(
    "value, message",
    [
        ('{"rope_type": "yarn", "factor": 4,}', "--rope-scaling: inline JSON: line 1 column 35: invalid"),
        ('{"rope_type": "yarn", "factor": 4}', "--rope-scaling: .*needs original_max_position_embeddings"),
        ('{"rope_type": "default", "rope_theta": 1e6}', "--rope-scaling: .*set by --rotary-base"),
        ('{"rope_type": "linear", "factr": 2}', "--rope-scaling: unsupported rope_scaling keys"),
        ("no/such/file.json", "--rope-scaling: no/such/file.json is neither inline JSON"),
        ("[1, 2]", "--rope-scaling: .*is neither inline JSON"),
    ],
)
def test_errors_name_the_flag(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rope_scaling_from_args(parse("--rope-scaling", value))


def test_file_errors_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "rope_type": "linear",\n  "factor": \n}\n')
    with pytest.raises(ValueError, match=f"--rope-scaling: {path}: line 4 column 1: invalid JSON"):
        rope_scaling_from_args(parse("--rope-scaling", str(path)))


def test_two_pi_flags_conflict() -> None:
    linear = '{"type": "linear", "factor": 2}'
    args = parse("--rotary-seq-len-interpolation-factor", "2", "--rope-scaling", linear)
    with pytest.raises(ValueError, match="either --rope-scaling or --rotary-seq-len-interpolation-factor"):
        rope_scaling_from_args(args)
