"""The on-disk checkpoint contract shared by the trainer, the converter, the evaluation tools and export:
directory layout and atomic commits, ``meta.json`` contents, file checksums verified on load."""

from megatron_anchor.checkpoint.integrity import (
    checkpoint_files,
    describe_files,
    file_crc32,
    os_error_message,
    probe_writable,
    verify_checkpoint,
    write_failure_detail,
)
from megatron_anchor.checkpoint.layout import (
    LATEST,
    META_FILE,
    TMP_SUFFIX,
    CheckpointError,
    commit_checkpoint,
    find_checkpoint,
    is_checkpoint,
    iter_dir_name,
    previous_checkpoint,
    read_meta,
    remove_stale_tmp,
    resolve_checkpoint,
    why_not_a_checkpoint,
    write_meta,
)
from megatron_anchor.checkpoint.meta import FORMAT_VERSION, checkpoint_meta, tokenizer_identity

__all__ = [
    "FORMAT_VERSION",
    "LATEST",
    "META_FILE",
    "TMP_SUFFIX",
    "CheckpointError",
    "checkpoint_files",
    "checkpoint_meta",
    "commit_checkpoint",
    "describe_files",
    "file_crc32",
    "find_checkpoint",
    "is_checkpoint",
    "iter_dir_name",
    "os_error_message",
    "previous_checkpoint",
    "probe_writable",
    "read_meta",
    "remove_stale_tmp",
    "resolve_checkpoint",
    "tokenizer_identity",
    "verify_checkpoint",
    "why_not_a_checkpoint",
    "write_failure_detail",
    "write_meta",
]
