"""Anchor insertion, packing, the indexed datasets (packed-anchor and Megatron-LM plain), sample tensors.

Preprocessing (``tools/preprocess_data.py`` is a thin CLI over it): ``tokenizers`` (sentencepiece / HF,
offline), ``jsonl`` (input chunks, record checks), ``sentences`` (offline punkt), ``encode`` (worker side),
``packing`` (greedy and best-fit packers over document lengths), ``packed_writer`` and ``indexed_writer``
(megatron-core ``MMIDIDX`` files, written under a lock, checked before reading), ``data_record``
(the ``{prefix}.meta.json`` beside each pair: layout, tokenizer, checksums), ``worker_pool`` (an ordered
process pool that fails at once when a worker dies), ``preprocess`` (the pipeline).

Training: ``layouts`` (packed or Megatron-LM plain, per prefix), ``dataset`` (``AnchorPackedDataset``),
``plain_dataset`` (``AnchorGPTDataset``: plain files sampled as megatron-core's ``GPTDataset`` does),
``sample`` (one sample as tensors; the vocabulary check), ``blending`` and ``splits`` (Megatron's
``--data-path`` / ``--split``), ``cp_batch`` (a CP rank's share of a batch), ``positions`` (RoPE positions).

Names are imported on first use (PEP 562), so that preprocessing workers never import torch or megatron-core.
"""

from __future__ import annotations

from megatron_anchor._lazy import lazy_exports

_EXPORTS = {
    "POSITION_MODES": "position_modes",
    "position_ids_from_doc_ids": "positions",
    "build_tokenizer": "tokenizers",
    "train_sentencepiece": "tokenizers",
    "default_anchor_id": "tokenizers",
    "SentencePieceTokenizer": "tokenizers",
    "HuggingFaceTokenizer": "tokenizers",
    "PACKERS": "packing",
    "pack": "packing",
    "pack_greedy": "packing",
    "pack_best_fit": "packing",
    "count_cut_documents": "packing",
    "IndexedWriter": "indexed_writer",
    "PreprocessConfig": "preprocess",
    "PreprocessError": "preprocess",
    "run_preprocess": "preprocess",
    "AnchorPackedDataset": "dataset",
    "AnchorGPTDataset": "plain_dataset",
    "AnchorDatasetConfig": "blending",
    "AnchorSplitDataset": "blending",
    "AnchorTokens": "blending",
    "build_train_valid_test_datasets": "blending",
    "DataError": "errors",
    "describe_prefix": "layouts",
    "prefix_layout": "layouts",
    "slice_batch_for_cp": "cp_batch",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
