"""Train/valid/test splits and weighted blends of anchored datasets, through megatron-core's builder.

``BlendedMegatronDatasetBuilder`` does what ``--data-path 0.7 A 0.3 B --split 969,30,1`` means in Megatron.
Each prefix is read in its own layout (``layouts``) and split into contiguous train/valid/test ranges, each an
``AnchorSplitDataset``: of samples for a packed-anchor file (a seeded shuffle, repeated for as many epochs as
requested), of documents for a Megatron-LM plain file (``AnchorGPTDataset``: megatron-core's ``GPTDataset``
sampling, each sample anchored). The weighted blend is megatron-core's ``BlendedDataset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split, get_blend_from_list

from megatron_anchor.data.dataset import AnchorPackedDataset
from megatron_anchor.data.layouts import open_prefix
from megatron_anchor.data.plain_dataset import AnchorGPTDataset
from megatron_anchor.data.splits import check_blend, check_split
from megatron_anchor.data.tokenizers import default_anchor_id

# A plain dataset's samples open with the tokenizer's anchor; packed files carry theirs.
NO_ANCHOR_REMEDY = (
    "a Megatron-LM plain dataset cannot be read with it; preprocess the data packed "
    "(tools/preprocess_data.py --seq-length with --anchor-token-id)"
)


@dataclass(frozen=True)
class AnchorTokens:
    """The token ids the datasets insert (the anchor) and split documents at (EOD), where megatron-core's
    configs hold a tokenizer; None where the run has no tokenizer (packed files carry their anchor)."""

    anchor: int | None = None
    eod: int | None = None
    vocab_size = None  # megatron-core then takes each file's token dtype from its .idx

    @classmethod
    def of(cls, tokenizer) -> AnchorTokens:
        """A tokenizer's anchor (``default_anchor_id``) and EOD (EOS) ids; ValueError without an anchor."""
        anchor = default_anchor_id(tokenizer, NO_ANCHOR_REMEDY)
        return cls(anchor, tokenizer.eos_id)

    @property
    def unique_identifiers(self) -> dict:
        """What megatron-core's index cache keys record of the tokenizer."""
        return {"class": type(self).__name__, "anchor": self.anchor, "eod": self.eod}


@dataclass
class AnchorDatasetConfig(GPTDatasetConfig):
    """megatron-core's GPT dataset config plus how samples are laid out for the anchor attention."""

    position_ids: str = "global"
    """RoPE positions: ``global`` (token index) or ``reset`` (per document)."""

    mask_cross_doc_labels: bool = False
    """Mask the loss on labels that are the first token of the next document."""

    vocab_size: int | None = None
    """The model's vocabulary: a sample holding an id at or past it is refused (``sample.DataError``)."""

    shuffle: bool = True
    """Seeded shuffles of documents and samples; off, samples come in file order."""

    add_extra_token_to_sequence: bool = False
    """A plain sample reads ``S`` tokens and the anchor takes the place of megatron-core's extra token."""

    def __post_init__(self) -> None:
        self.tokenizer = self.tokenizer or AnchorTokens()
        # Megatron's names for the same choices (GPTDataset's own sample builder is not used).
        self.reset_position_ids = self.position_ids == "reset"
        self.reset_attention_mask = True
        self.eod_mask_loss = self.mask_cross_doc_labels
        super().__post_init__()


class AnchorSplitDataset(MegatronDataset):
    """One split of one prefix, whatever its layout (megatron-core's blend wants one dataset class).

    Packed-anchor samples come in a seeded order, a fresh permutation per epoch; a Megatron-LM plain file is
    sampled by ``AnchorGPTDataset`` (megatron-core's ``GPTDataset`` indices, each sample anchored).
    """

    def __init__(
        self,
        dataset: AnchorPackedDataset | IndexedDataset,
        dataset_path: str | None,
        indices: np.ndarray,
        num_samples: int | None,
        index_split: Split,
        config: AnchorDatasetConfig,
    ) -> None:
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        self.plain = None
        if isinstance(dataset, AnchorPackedDataset):
            self.sample_index = self._build_sample_index()
        else:
            self.plain = AnchorGPTDataset(dataset, dataset_path, indices, num_samples, index_split, config)

    def _build_sample_index(self) -> np.ndarray:
        """A fresh permutation of the split's packed samples per epoch (file order without the shuffle), as
        many epochs as ``num_samples`` needs."""
        if len(self.indices) == 0:
            return np.zeros(0, dtype=np.int64)
        epochs = max(1, math.ceil((self.num_samples or 0) / len(self.indices)))
        if not self.config.shuffle:
            return np.tile(self.indices.astype(np.int64), epochs)
        rng = np.random.RandomState(self.config.random_seed)
        return np.concatenate([rng.permutation(self.indices).astype(np.int64) for _ in range(epochs)])

    def distinct_samples(self) -> int:
        """Samples of this split before repetition: a packed split's, or one epoch of a plain split's."""
        return self.plain.distinct_samples() if self.plain is not None else len(self.indices)

    def __len__(self) -> int:
        return len(self.plain) if self.plain is not None else len(self.sample_index)

    def __getitem__(self, index: int) -> dict:
        if self.plain is not None:
            return self.plain[index]
        return self.dataset[int(self.sample_index[index])]

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: AnchorPackedDataset | IndexedDataset) -> int:
        """What ``--split`` divides: samples of a packed file, index entries (documents) of a plain one."""
        if isinstance(low_level_dataset, AnchorPackedDataset):
            return len(low_level_dataset)
        return GPTDataset.numel_low_level_dataset(low_level_dataset)

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: AnchorDatasetConfig):
        """The packed samples at ``dataset_path``, or the plain file's ``IndexedDataset``."""
        return open_prefix(dataset_path, config)

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return MegatronDataset._key_config_attributes() + ["position_ids", "mask_cross_doc_labels", "shuffle"]


def build_train_valid_test_datasets(
    data_path: list[str],
    split: str,
    seq_length: int,
    seed: int,
    num_samples: tuple[int, int, int],
    position_ids: str = "global",
    mask_cross_doc_labels: bool = False,
    path_to_cache: str | None = None,
    tokens: AnchorTokens | None = None,
    vocab_size: int | None = None,
    shuffle: bool = True,
) -> tuple:
    """``(train, valid, test)`` datasets for Megatron's ``--data-path`` and ``--split``; None where empty.

    ``data_path`` is ``["prefix"]`` or weighted ``["0.7", "prefixA", "0.3", "prefixB"]``, each prefix packed
    or plain; ``num_samples`` is the number of samples each split must provide (epochs repeat,
    reshuffled). ``path_to_cache`` (``--data-cache-path``) keeps megatron-core's indices between runs (rank
    0 writes them, so a process group must exist; plain files default to ``{prefix}/cache/`` as in
    megatron-core). ``tokens``: the anchor and EOD ids plain files need; ``vocab_size``: refuse samples
    with ids outside it. Call it on every rank.
    """
    check_split(split)
    check_blend(data_path)
    config = AnchorDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=get_blend_from_list(data_path),
        split=split,
        position_ids=position_ids,
        mask_cross_doc_labels=mask_cross_doc_labels,
        path_to_cache=path_to_cache,
        tokenizer=tokens,
        vocab_size=vocab_size,
        shuffle=shuffle,
    )
    builder = BlendedMegatronDatasetBuilder(AnchorSplitDataset, list(num_samples), lambda: True, config)
    datasets = builder.build()
    return tuple(None if dataset is None or len(dataset) == 0 else dataset for dataset in datasets)
