"""Conversion between Hugging Face Llama-family checkpoints and megatron_anchor's megatron-core model.

Names are imported on first use (PEP 562): a conversion loads torch and safetensors, never megatron-core.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "KEEP": "hf_checkpoint",
    "RopeOverride": "hf_checkpoint",
    "export_hf_checkpoint": "hf_checkpoint",
    "import_hf_checkpoint": "hf_checkpoint",
    "format_flags": "hf_config",
    "rope_from_hf": "hf_config",
    "trainer_flags": "hf_config",
    "SUPPORTED_ARCHITECTURES": "hf_mapping",
    "ModelShape": "hf_mapping",
    "hf_to_mcore": "hf_mapping",
    "mcore_to_hf": "hf_mapping",
    "merge_from_tp": "hf_mapping",
    "shape_from_hf_config": "hf_mapping",
    "split_for_tp": "hf_mapping",
    "tensor_rules": "hf_mapping",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
