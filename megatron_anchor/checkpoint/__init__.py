"""The on-disk checkpoint contract shared by the trainer, the converter, the evaluation tools and export:
directory layout and atomic commits (``layout``), ``meta.json`` contents (``meta``), file checksums verified
on load (``integrity``), the one loader of model weights (``weights``), Megatron-LM's checkpoints
(``megatron``).

Names are imported on first use (PEP 562): the layout helpers load without torch.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "EXTRA_STATE": "names",
    "LOCK_FILE": "layout",
    "MEGATRON_TRACKER": "layout",
    "TE_RENAMES": "names",
    "CheckpointError": "layout",
    "CheckpointReader": "weights",
    "checked_manifest": "integrity",
    "dcp_failure": "integrity",
    "is_megatron_checkpoint": "layout",
    "load_megatron_weights": "megatron",
    "load_model_weights": "weights",
    "load_verified_weights": "weights",
    "PlainDataLoadPlanner": "weights",
    "weights_only_refusal": "weights",
    "megatron_meta": "megatron",
    "newest_checkpoint": "layout",
    "read_pointer": "layout",
    "step_of_checkpoint": "layout",
    "te_name": "names",
    "write_weights_checkpoint": "weights",
    "FORMAT_VERSION": "meta",
    "LATEST": "layout",
    "META_FILE": "layout",
    "TMP_SUFFIX": "layout",
    "check_tp_size": "layout",
    "checkpoint_files": "integrity",
    "checkpoint_meta": "meta",
    "commit_checkpoint": "layout",
    "describe_files": "integrity",
    "file_crc32": "integrity",
    "find_checkpoint": "layout",
    "pointer_problem": "layout",
    "is_checkpoint": "layout",
    "iter_dir_name": "layout",
    "previous_checkpoint": "layout",
    "read_meta": "layout",
    "RecordedTokenizer": "meta",
    "recorded_tokenizer": "meta",
    "remove_stale_tmp": "layout",
    "resolve_checkpoint": "layout",
    "tokenizer_identity": "meta",
    "trained_length": "meta",
    "verify_checkpoint": "integrity",
    "why_not_a_checkpoint": "layout",
    "write_failure_detail": "integrity",
    "write_meta": "layout",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
