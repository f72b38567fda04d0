"""Command-line flags for RoPE: Megatron's names plus ``--rope-scaling`` (a strategy as JSON or a file)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from megatron_anchor.rope.scaling import RopeScaling

ROPE_DEFAULTS = {"rotary_base": 10000.0, "rotary_percent": 1.0, "rotary_interleaved": False}


def add_rope_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add --rotary-base, --rotary-percent, --rotary-interleaved, --rotary-seq-len-interpolation-factor
    and --rope-scaling to ``parser``."""
    group = parser.add_argument_group("rope")
    group.add_argument(
        "--rotary-base",
        type=float,
        default=ROPE_DEFAULTS["rotary_base"],
        help="RoPE base (ABF: raise it); default 10000.",
    )
    group.add_argument(
        "--rotary-percent",
        type=float,
        default=ROPE_DEFAULTS["rotary_percent"],
        help="Fraction of each head's channels rotated.",
    )
    group.add_argument(
        "--rotary-interleaved", action="store_true", help="Rotate channel pairs (2k, 2k+1), not halves."
    )
    group.add_argument(
        "--rotary-seq-len-interpolation-factor",
        type=float,
        default=None,
        help="Position interpolation factor (Megatron's flag); same as --rope-scaling linear.",
    )
    group.add_argument(
        "--rope-scaling",
        default=None,
        help='Context-extension strategy: JSON such as \'{"rope_type": "yarn", "factor": 4, '
        '"original_max_position_embeddings": 4096}\' (Hugging Face rope_scaling form accepted), '
        "a JSON file (e.g. written by tools/rope_distribution.py --save), or 'none' (no scaling).",
    )
    return parser


def _load_json_object(text: str) -> dict:
    """Inline JSON (starting with '{') or the contents of the JSON file at path ``text``."""
    if text.startswith("{"):
        source, content = "inline JSON", text
    else:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"{path} is neither inline JSON (starting with '{{') nor an existing file")
        source, content = str(path), path.read_text()
    try:
        data = json.loads(content)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source}: line {err.lineno} column {err.colno}: invalid JSON: {err.msg}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    return data


def parse_rope_scaling(text: str | None) -> RopeScaling | None:
    """A ``--rope-scaling`` value (inline JSON or a path to a JSON file) as a RopeScaling, or None."""
    if text is None or text.strip().lower() in ("", "none"):
        return None
    stripped = text.strip()
    try:
        data = _load_json_object(stripped)
        given_elsewhere = sorted({"rope_theta", "partial_rotary_factor"} & set(data))
        if given_elsewhere:
            raise ValueError(f"{given_elsewhere} are set by --rotary-base / --rotary-percent, not here")
        scaling = RopeScaling.from_dict(data)
    except (ValueError, TypeError) as err:
        raise ValueError(f"--rope-scaling: {err}") from err
    return None if scaling.rope_type == "default" else scaling


def rope_scaling_from_args(args: argparse.Namespace) -> RopeScaling | None:
    """The strategy given by --rope-scaling or --rotary-seq-len-interpolation-factor (not both), or None."""
    scaling = parse_rope_scaling(getattr(args, "rope_scaling", None))
    pi_factor = getattr(args, "rotary_seq_len_interpolation_factor", None)
    if pi_factor is None:
        return scaling
    if scaling is not None:
        raise ValueError("give either --rope-scaling or --rotary-seq-len-interpolation-factor, not both")
    if not pi_factor > 0:
        raise ValueError(f"--rotary-seq-len-interpolation-factor must be > 0, got {pi_factor}")
    return RopeScaling("linear", factor=pi_factor)
