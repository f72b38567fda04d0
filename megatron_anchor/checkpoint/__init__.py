"""The on-disk checkpoint contract shared by the trainer, the converter, the evaluation tools and export:
directory layout and atomic commits, ``meta.json`` contents, file checksums verified on load.

Names are imported on first use (PEP 562): the layout helpers load without torch.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "layout",
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
    "is_checkpoint": "layout",
    "iter_dir_name": "layout",
    "previous_checkpoint": "layout",
    "probe_writable": "integrity",
    "read_meta": "layout",
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
