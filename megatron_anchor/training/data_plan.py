"""How many samples each split holds and how many times a run reads it (epochs), from the sizes of the
``--data-path`` datasets, before anything is built: the dry run's data lines.

The split of each dataset and the share of a blend are megatron-core's own arithmetic
(``parse_and_normalize_split``, ``convert_split_vector_to_split_matrix``, the builder's rounding of the
split bounds and ``_get_size_per_split_per_dataset``), so the numbers are the ones the run will build.
"""

from __future__ import annotations

import argparse

SPLITS = ("train", "valid", "test")


def _split_ranges(num_elements: int, split: str) -> list[tuple[int, int] | None]:
    """The ``[begin, end)`` elements of each of train/valid/test under ``--split`` (None: no such split),
    rounded as megatron-core's builder rounds them."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [
        None if b is None else (int(round(b[0] * num_elements)), int(round(b[1] * num_elements)))
        for b in matrix
    ]


def split_sizes(num_samples: int, split: str) -> list[int]:
    """Samples of a dataset of ``num_samples`` in each of train/valid/test under ``--split``."""
    return [0 if r is None else r[1] - r[0] for r in _split_ranges(num_samples, split)]


def samples_per_split(prefix: str, layout: str, seq_length: int, split: str) -> list[int]:
    """Samples per split of one prefix: packed samples are split as they are; a plain (Megatron-LM) file is
    split by its sequences, each split holding one epoch of its tokens // ``seq_length`` samples."""
    from megatron_anchor.data.layouts import PACKED

    if layout == PACKED:
        from megatron_anchor.data.dataset import AnchorPackedDataset

        return split_sizes(len(AnchorPackedDataset(prefix, seq_length=seq_length)), split)
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_anchor.data.plain_dataset import samples_per_epoch

    indexed = IndexedDataset(prefix)  # kept alive: its lengths are a view of its memory map
    lengths = indexed.sequence_lengths
    ranges = _split_ranges(len(lengths), split)
    return [0 if r is None else samples_per_epoch(lengths[r[0] : r[1]], seq_length) for r in ranges]


def _requested(args: argparse.Namespace) -> list[int]:
    """Samples the run reads from each split: every step's batch; the same --eval-iters batches at each
    evaluation (none without --eval-interval); never the test split."""
    valid = args.eval_iters * args.global_batch_size if args.eval_interval else 0
    return [args.train_iters * args.global_batch_size, valid, 0]


def _epochs(read: int, held: int) -> str:
    return f"{read / held:,.2f} epochs" if held else "nothing to read"


def data_plan(
    args: argparse.Namespace, sizes: dict[str, list[int]]
) -> tuple[list[str], list[str], list[str]]:
    """``(facts, warnings, errors)`` about the splits of the ``--data-path`` datasets whose samples per split
    are ``sizes`` (prefix -> [train, valid, test]): one line per split."""
    from megatron.core.datasets.blended_megatron_dataset_builder import _get_size_per_split_per_dataset
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, weights = get_blend_from_list(args.data_path)
    weights = [1.0] * len(prefixes) if weights is None else weights
    total = sum(weights)
    shares = [w / total for w in weights]
    requested = _requested(args)
    per_dataset = _get_size_per_split_per_dataset(shares, requested)  # [dataset][split]
    facts, warnings, errors = [], [], []
    for i, name in enumerate(SPLITS):
        held = sum(sizes[p][i] for p in prefixes)
        if held == 0:
            line = f"{name} split: empty (--split {args.split})"
            if name == "train":
                errors.append(f"--split {args.split} leaves the train split of --data-path empty")
            elif requested[i]:
                warnings.append(f"{line}: no validation although --eval-interval {args.eval_interval}")
            else:
                facts.append(line)
            continue
        if not requested[i]:
            why = "not read by training" if name == "test" else "not read: no --eval-interval"
            facts.append(f"{name} split: {held:,} samples ({why})")
            continue
        reads = "every evaluation reads" if name == "valid" else "the run reads"
        if len(prefixes) == 1:
            parts = [_epochs(per_dataset[0][i], held)]
        else:
            parts = [f"{sizes[p][i]:,} of {p}: {_epochs(per_dataset[k][i], sizes[p][i])}"
                     for k, p in enumerate(prefixes)]  # fmt: skip
        facts.append(f"{name} split: {held:,} samples; {reads} {requested[i]:,} (" + "; ".join(parts) + ")")
        errors += [
            f"--split {args.split} leaves {p} no {name} samples, but its blend weight asks for "
            f"{per_dataset[k][i]:,}"
            for k, p in enumerate(prefixes)
            if sizes[p][i] == 0 and per_dataset[k][i]
        ]
    return facts, warnings, errors
