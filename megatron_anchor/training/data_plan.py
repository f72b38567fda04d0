"""How many samples each split holds and how many times a run reads it (epochs), from the sample counts of
the ``--data-path`` datasets, before anything is built: the dry run's data lines.

The split of each dataset and the share of a blend are megatron-core's own arithmetic
(``parse_and_normalize_split``, ``convert_split_vector_to_split_matrix``, the builder's rounding of the
split bounds and ``_get_size_per_split_per_dataset``), so the numbers are the ones the run will build.
"""

from __future__ import annotations

import argparse

SPLITS = ("train", "valid", "test")


def split_sizes(num_samples: int, split: str) -> list[int]:
    """Samples of a dataset of ``num_samples`` in each of train/valid/test under ``--split``."""
    from megatron.core.datasets.blended_megatron_dataset_config import (
        convert_split_vector_to_split_matrix,
        parse_and_normalize_split,
    )

    matrix = convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    return [
        0 if bounds is None else int(round(bounds[1] * num_samples)) - int(round(bounds[0] * num_samples))
        for bounds in matrix
    ]


def _requested(args: argparse.Namespace) -> list[int]:
    """Samples the run reads from each split: every step's batch; the same --eval-iters batches at each
    evaluation (none without --eval-interval); never the test split."""
    valid = args.eval_iters * args.global_batch_size if args.eval_interval else 0
    return [args.train_iters * args.global_batch_size, valid, 0]


def _epochs(read: int, held: int) -> str:
    return f"{read / held:,.2f} epochs" if held else "nothing to read"


def data_plan(args: argparse.Namespace, samples: dict[str, int]) -> tuple[list[str], list[str], list[str]]:
    """``(facts, warnings, errors)`` about the splits of the ``--data-path`` datasets whose sample counts
    are ``samples`` (prefix -> samples): one line per split."""
    from megatron.core.datasets.blended_megatron_dataset_builder import _get_size_per_split_per_dataset
    from megatron.core.datasets.utils import get_blend_from_list

    prefixes, weights = get_blend_from_list(args.data_path)
    weights = [1.0] * len(prefixes) if weights is None else weights
    total = sum(weights)
    shares = [w / total for w in weights]
    requested = _requested(args)
    per_dataset = _get_size_per_split_per_dataset(shares, requested)  # [dataset][split]
    sizes = {p: split_sizes(samples[p], args.split) for p in prefixes}
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
