"""The description of a RoPE context-extension strategy (SPEC section 3), read from Hugging Face configs."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROPE_TYPES = ("default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope", "dprope")

# Hugging Face rope_scaling / rope_parameters keys that this description does not carry: the base and the
# rotary fraction come from --rotary-base and --rotary-percent (the config's rope_theta /
# partial_rotary_factor), so from_hf accepts and drops them.
# Megatron's --use-rope-scaling: Llama 3.1's scaling with these fixed values and --rope-scaling-factor
# (megatron-core's RotaryEmbedding._apply_scaling defaults, core_v0.16.0
# megatron/core/models/common/embeddings/rotary_pos_embedding.py).
MEGATRON_LLAMA3_SCALING = {
    "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
}  # fmt: skip
_HF_KEYS_GIVEN_ELSEWHERE = ("rope_theta", "partial_rotary_factor")
_HF_TYPE_ALIASES = {"su": "longrope", "mistral_yarn": "yarn"}


@dataclass
class RopeScaling:
    """A RoPE context-extension strategy; the base and rotary dim are given separately."""

    rope_type: str = "default"
    """One of ROPE_TYPES: default (ABF is a new --rotary-base), linear (PI), ntk (static NTK-aware base),
    dynamic (dynamic NTK), yarn, llama3 (Llama 3.1), longrope (user per-pair factors), dprope."""
    factor: float = 1.0
    """Context scale s = L'/L."""
    original_max_position_embeddings: int | None = None
    """The original context L (needed by yarn, llama3, dynamic, longrope)."""
    beta_fast: float = 32.0
    """YaRN: rotations over L below which a pair keeps its frequency."""
    beta_slow: float = 1.0
    """YaRN: rotations over L above which a pair is fully interpolated."""
    truncate: bool = True
    """YaRN: round the ramp bounds outwards to whole pairs, as transformers does by default."""
    mscale: float | None = None
    """YaRN (DeepSeek form): numerator multiplier of ln(s) in the attention factor."""
    mscale_all_dim: float | None = None
    """YaRN (DeepSeek form): denominator multiplier of ln(s) in the attention factor."""
    attention_factor: float | None = None
    """yarn/longrope: explicit multiplier of cos/sin; None derives it from factor as transformers does."""
    low_freq_factor: float = 1.0
    """Llama 3.1: wavelengths above L/low_freq_factor are divided by factor."""
    high_freq_factor: float = 4.0
    """Llama 3.1: wavelengths below L/high_freq_factor are kept."""
    long_factor: list[float] | None = None
    """LongRoPE: per-pair divisors of theta_k used beyond the original context."""
    short_factor: list[float] | None = None
    """LongRoPE: per-pair divisors of theta_k used within the original context."""
    interpolated_pairs: list[int] = field(default_factory=list)
    """DPRoPE: rotary pairs k whose theta_k is divided by factor; every other pair extrapolates."""
    rotary_dim: int | None = None
    """DPRoPE: the rotary dim the pairs were chosen for (checked when frequencies are computed)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the field when the description is inconsistent."""
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(f"rope_type {self.rope_type!r} is not one of {ROPE_TYPES}")
        if self.rope_type != "default" and not self.factor > 0:
            raise ValueError(f"rope_type {self.rope_type!r} needs factor > 0, got {self.factor}")
        needs_original = ("yarn", "llama3", "dynamic", "longrope")
        if self.rope_type in needs_original and not self.original_max_position_embeddings:
            raise ValueError(f"rope_type {self.rope_type!r} needs original_max_position_embeddings")
        if self.rope_type == "longrope":
            if not self.long_factor or not self.short_factor:
                raise ValueError("rope_type 'longrope' needs long_factor and short_factor (one per pair)")
            if len(self.long_factor) != len(self.short_factor):
                raise ValueError("longrope long_factor and short_factor must have one entry per rotary pair")
        if self.rope_type == "llama3" and not self.high_freq_factor > self.low_freq_factor:
            raise ValueError("llama3 needs high_freq_factor > low_freq_factor")
        if self.rope_type == "dprope":
            if self.rotary_dim is None:
                raise ValueError("rope_type 'dprope' needs rotary_dim (the dim its pairs were chosen for)")
            bad = [k for k in self.interpolated_pairs if not 0 <= k < self.rotary_dim // 2]
            if bad:
                raise ValueError(f"dprope interpolated_pairs {bad} outside [0, {self.rotary_dim // 2})")
            self.interpolated_pairs = sorted(set(self.interpolated_pairs))

    @classmethod
    def from_hf(
        cls, rope_scaling: dict[str, Any] | None, max_position_embeddings: int | None = None
    ) -> RopeScaling | None:
        """Read a Hugging Face ``rope_scaling`` / ``rope_parameters`` dict (``type`` or ``rope_type`` key).

        ``max_position_embeddings`` (the config's top-level value) fills what transformers derives from it:
        dynamic's original length, and yarn/longrope's factor when the dict has none.
        Returns None for no scaling (None, or rope_type "default" with nothing else to say).
        """
        if rope_scaling is None:
            return None
        params = dict(rope_scaling)
        rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
        params.pop("type", None)
        rope_type = _HF_TYPE_ALIASES.get(rope_type, rope_type)
        for key in _HF_KEYS_GIVEN_ELSEWHERE:
            params.pop(key, None)
        known = {f.name for f in dataclasses.fields(cls)} - {"rope_type"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unsupported rope_scaling keys {unknown} for rope_type {rope_type!r}")
        if rope_type == "dynamic" and params.get("original_max_position_embeddings") is None:
            params["original_max_position_embeddings"] = max_position_embeddings
        original = params.get("original_max_position_embeddings")
        if params.get("factor") is None:
            params.pop("factor", None)
            if rope_type in ("yarn", "longrope") and max_position_embeddings and original:
                params["factor"] = max_position_embeddings / original
        params = {k: v for k, v in params.items() if v is not None}
        if rope_type == "default" and not params:
            return None
        return cls(rope_type=rope_type, **params)

    def to_hf(self) -> dict[str, Any]:
        """The Hugging Face ``rope_scaling`` dict of this strategy (DPRoPE as equivalent longrope factors)."""
        if self.rope_type == "ntk":
            raise ValueError(
                "transformers has no static NTK-aware rope_type: use rope_theta = base * factor**(d/(d-2))"
            )
        if self.rope_type == "dprope":
            factors = self.pair_factors()
            return {
                "rope_type": "longrope",
                "factor": self.factor,
                "original_max_position_embeddings": self.original_max_position_embeddings,
                "long_factor": factors,
                "short_factor": factors,
                "attention_factor": 1.0,
            }
        keys = {
            "default": (),
            "linear": ("factor",),
            "dynamic": ("factor", "original_max_position_embeddings"),
            "yarn": (
                "factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "truncate",
                "mscale", "mscale_all_dim", "attention_factor",
            ),
            "llama3": ("factor", "original_max_position_embeddings", "low_freq_factor", "high_freq_factor"),
            "longrope": (
                "factor", "original_max_position_embeddings", "long_factor", "short_factor",
                "attention_factor",
            ),
        }[self.rope_type]
        out = {"rope_type": self.rope_type}
        out.update({k: getattr(self, k) for k in keys if getattr(self, k) is not None})
        return out

    def pair_factors(self) -> list[float]:
        """DPRoPE: the divisor of each pair's theta_k (factor for interpolated pairs, else 1)."""
        assert self.rotary_dim is not None
        chosen = set(self.interpolated_pairs)
        return [float(self.factor) if k in chosen else 1.0 for k in range(self.rotary_dim // 2)]

    def to_dict(self) -> dict[str, Any]:
        """``rope_type`` and every field that differs from its default, JSON-ready."""
        default = RopeScaling()
        out: dict[str, Any] = {"rope_type": self.rope_type}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "rope_type" and value != getattr(default, f.name):
                out[f.name] = value
        return out

    def save_json(self, path: str | Path) -> None:
        """Write this description as JSON, one field per line (the form ``--rope-scaling`` accepts)."""
        lines = [f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in self.to_dict().items()]
        Path(path).write_text("{\n" + ",\n".join(lines) + "\n}\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RopeScaling:
        """Build from this project's dict form, falling back to Hugging Face's form (``type`` key etc.)."""
        known = {f.name for f in dataclasses.fields(cls)}
        if "rope_type" in data and set(data) <= known:
            return cls(**data)
        scaling = cls.from_hf(data)
        return scaling if scaling is not None else cls()

    @classmethod
    def load_json(cls, path: str | Path) -> RopeScaling:
        """Read a description written by ``save_json`` (or a Hugging Face rope_scaling dict) from a file."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: line {err.lineno}: invalid JSON: {err.msg}") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)
