"""Train/valid/test splits and weighted blends of packed-anchor datasets, through megatron-core's builder.

``BlendedMegatronDatasetBuilder`` does what ``--data-path 0.7 A 0.3 B --split 969,30,1`` means in Megatron:
each prefix's samples are split into contiguous train/valid/test ranges, each range becomes an
``AnchorSplitDataset`` (a seeded shuffle, repeated for as many epochs as requested), and the weighted blend
is megatron-core's ``BlendedDataset``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.blended_megatron_dataset_config import BlendedMegatronDatasetConfig
from megatron.core.datasets.megatron_dataset import MegatronDataset
from megatron.core.datasets.utils import Split, get_blend_from_list

from megatron_anchor.data.dataset import AnchorPackedDataset


@dataclass
class AnchorDatasetConfig(BlendedMegatronDatasetConfig):
    """megatron-core's dataset config plus how samples are laid out for the anchor attention."""

    position_ids: str = "global"
    """RoPE positions: ``global`` (token index) or ``reset`` (per document)."""

    mask_cross_doc_labels: bool = False
    """Mask the loss on labels that are the first token of the next document."""


class AnchorSplitDataset(MegatronDataset):
    """One split of one packed-anchor dataset: its samples in a seeded order, epoch after epoch."""

    def __init__(
        self,
        dataset: AnchorPackedDataset,
        dataset_path: str | None,
        indices: np.ndarray,
        num_samples: int | None,
        index_split: Split,
        config: AnchorDatasetConfig,
    ) -> None:
        super().__init__(dataset, dataset_path, indices, num_samples, index_split, config)
        self.sample_index = self._build_sample_index()

    def _build_sample_index(self) -> np.ndarray:
        """A fresh permutation of the split's samples per epoch, as many epochs as ``num_samples`` needs."""
        if len(self.indices) == 0:
            return np.zeros(0, dtype=np.int64)
        epochs = max(1, math.ceil((self.num_samples or 0) / len(self.indices)))
        rng = np.random.RandomState(self.config.random_seed)
        return np.concatenate([rng.permutation(self.indices).astype(np.int64) for _ in range(epochs)])

    def __len__(self) -> int:
        return len(self.sample_index)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[int(self.sample_index[index])]

    @staticmethod
    def numel_low_level_dataset(low_level_dataset: AnchorPackedDataset) -> int:
        """Samples in the packed file (the unit the split ratios divide)."""
        return len(low_level_dataset)

    @staticmethod
    def build_low_level_dataset(dataset_path: str, config: AnchorDatasetConfig) -> AnchorPackedDataset:
        """The packed file at ``dataset_path`` read with the config's layout options."""
        return AnchorPackedDataset(
            dataset_path,
            seq_length=config.sequence_length,
            position_ids=config.position_ids,
            mask_cross_doc_labels=config.mask_cross_doc_labels,
        )

    @staticmethod
    def _key_config_attributes() -> list[str]:
        return MegatronDataset._key_config_attributes() + ["position_ids", "mask_cross_doc_labels"]


def build_train_valid_test_datasets(
    data_path: list[str],
    split: str,
    seq_length: int,
    seed: int,
    num_samples: tuple[int, int, int],
    position_ids: str = "global",
    mask_cross_doc_labels: bool = False,
    path_to_cache: str | None = None,
) -> tuple:
    """``(train, valid, test)`` datasets for Megatron's ``--data-path`` and ``--split``; None where empty.

    ``data_path`` is ``["prefix"]`` or weighted ``["0.7", "prefixA", "0.3", "prefixB"]``; ``num_samples``
    is the number of samples each split must provide (epochs repeat, reshuffled). ``path_to_cache``
    (``--data-cache-path``) keeps megatron-core's blend indices between runs (rank 0 writes them, so a
    process group must exist). Call it on every rank.
    """
    config = AnchorDatasetConfig(
        random_seed=seed,
        sequence_length=seq_length,
        blend=get_blend_from_list(data_path),
        split=split,
        position_ids=position_ids,
        mask_cross_doc_labels=mask_cross_doc_labels,
        path_to_cache=path_to_cache,
    )
    builder = BlendedMegatronDatasetBuilder(AnchorSplitDataset, list(num_samples), lambda: True, config)
    datasets = builder.build()
    return tuple(None if dataset is None or len(dataset) == 0 else dataset for dataset in datasets)
