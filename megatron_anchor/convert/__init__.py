"""Conversion between Hugging Face Llama-family checkpoints and megatron_anchor's megatron-core model."""

from megatron_anchor.checkpoint.layout import resolve_checkpoint
from megatron_anchor.checkpoint.weights import CheckpointReader, load_model_weights
from megatron_anchor.convert.hf_checkpoint import (
    KEEP,
    RopeOverride,
    export_hf_checkpoint,
    import_hf_checkpoint,
)
from megatron_anchor.convert.hf_config import format_flags, rope_from_hf, trainer_flags
from megatron_anchor.convert.hf_mapping import (
    SUPPORTED_ARCHITECTURES,
    ModelShape,
    hf_to_mcore,
    mcore_to_hf,
    merge_from_tp,
    shape_from_hf_config,
    split_for_tp,
    tensor_rules,
)

__all__ = [
    "KEEP",
    "SUPPORTED_ARCHITECTURES",
    "CheckpointReader",
    "ModelShape",
    "RopeOverride",
    "export_hf_checkpoint",
    "format_flags",
    "hf_to_mcore",
    "import_hf_checkpoint",
    "load_model_weights",
    "mcore_to_hf",
    "merge_from_tp",
    "resolve_checkpoint",
    "rope_from_hf",
    "shape_from_hf_config",
    "split_for_tp",
    "tensor_rules",
    "trainer_flags",
]
