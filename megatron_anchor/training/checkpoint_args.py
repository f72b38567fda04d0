"""The start-up checks of the checkpoint, resume and fault-tolerance flags (Megatron's names).

The checks read only ``meta.json`` and the file system (no process group), so ``--dry-run`` runs them too:
``--load`` must hold a checkpoint (except the auto-resume pattern ``--load`` = ``--save``, whose first run
starts from scratch), or, as in Megatron-LM, ``--pretrained-checkpoint`` gives the starting weights while
``--load`` holds none; model flags left out are taken from the checkpoint; a resume must have steps left
and the same LR schedule (unless ``--override-opt-param-scheduler``); ``--save`` must be writable and must
not hold checkpoints this run would mix with or overwrite.
"""

from __future__ import annotations

import argparse
import os

from megatron_anchor._files import output_problem, writable_problem
from megatron_anchor._output_lock import lock_holder, locked_message
from megatron_anchor.checkpoint import (
    LOCK_FILE,
    CheckpointError,
    check_tp_size,
    find_checkpoint,
    newest_checkpoint,
    pointer_problem,
    read_meta,
    recorded_tokenizer,
    step_of_checkpoint,
    why_not_a_checkpoint,
)
from megatron_anchor.training.model_args import (
    apply_checkpoint_model,
    check_checkpoint_vocab,
    validate_model_args,
)
from megatron_anchor.training.report import raise_all
from megatron_anchor.training.vocab import resolve_vocab_size

# LR-schedule settings a resume must keep (Megatron's OptimizerParamScheduler checks the same).
SCHEDULE_KEYS = (
    "lr", "min_lr", "lr_warmup_iters", "lr_decay_iters", "lr_decay_style", "weight_decay", "decoupled_lr",
    "decoupled_min_lr",
)  # fmt: skip


def schedule_record(args: argparse.Namespace) -> dict:
    """The schedule a checkpoint records (checked on resume)."""
    keys = (*SCHEDULE_KEYS, "train_iters", "global_batch_size", "seq_length")
    return {k: getattr(args, k) for k in keys}


def _same_path(a: str | None, b: str | None) -> bool:
    return bool(a and b) and os.path.realpath(a) == os.path.realpath(b)


def _checkpoint_in(path: str, flag: str, notes: list[str]) -> str | None:
    """The checkpoint ``path`` is or names (``find_checkpoint``); a directory of complete ``iter_*``
    checkpoints without a pointer gives its newest (noted: it is never a fresh start). ValueError for a
    damaged pointer."""
    try:
        found = find_checkpoint(path, notes)
    except CheckpointError as err:
        raise ValueError(f"{flag}: {err}") from err
    if found is None and (found := newest_checkpoint(path)) is not None:
        notes.append(f"{flag} {path} names no checkpoint ('latest' is missing): taking its newest, {found}")
    return found


def load_checkpoint_config(args: argparse.Namespace) -> list[str]:
    """Resolve ``--load`` / ``--pretrained-checkpoint`` into ``args.load_checkpoint`` (a checkpoint directory
    or None) and fill the model flags left out from its metadata. Weights from ``--pretrained-checkpoint``
    (when ``--load`` holds no checkpoint) start at step 0, as ``--finetune``. Returns one-line notes;
    ValueError when a given directory holds no checkpoint."""
    args.load_checkpoint, args.load_is_pretrained, notes = None, False, []
    pretrained = getattr(args, "pretrained_checkpoint", None)
    if not args.load and not pretrained:
        if getattr(args, "finetune", False):
            raise ValueError("--finetune needs --load (the checkpoint whose weights to start from)")
        return []
    path = _checkpoint_in(args.load, "--load", notes) if args.load else None
    if path is not None and pretrained:
        notes.append(f"--load {args.load} holds a checkpoint: resuming it (--pretrained-checkpoint not used)")
    elif pretrained:
        path = _checkpoint_in(pretrained, "--pretrained-checkpoint", notes)
        if path is None:
            raise ValueError(f"--pretrained-checkpoint {pretrained} {why_not_a_checkpoint(pretrained)}")
        args.finetune, args.load_is_pretrained = True, True
        where = f"--load {args.load} holds no checkpoint yet" if args.load else "no --load"
        notes.append(f"{where}: starting from the weights of --pretrained-checkpoint {path} at step 0")
    elif path is None:
        if _same_path(getattr(args, "save", None), args.load):
            return [f"no checkpoint in --load {args.load} (= --save) yet: starting from scratch"]
        raise ValueError(f"--load {args.load} {why_not_a_checkpoint(args.load)}")
    args.load_checkpoint = path
    return notes + apply_checkpoint_model(args, read_meta(path), path)


def resolve_model_config(args: argparse.Namespace, tp: int) -> list[str]:
    """The model flags from the command line, the ``--load`` checkpoint and the defaults, validated (the
    one rule the trainer and the evaluation tools share). Returns notes; ValueError on a bad flag."""
    notes = load_checkpoint_config(args)
    validate_model_args(args, tp)
    path = args.load_checkpoint
    if path is not None and (args.tokenizer_model is not None or args.vocab_size is not None):
        notes += check_checkpoint_vocab(args, read_meta(path), path, resolve_vocab_size(args))
    return notes


def check_resume_and_save(args: argparse.Namespace) -> list[str]:
    """Parallel sizes, steps left and schedule of a resume; ``--save`` writability and what it holds.
    Returns notes."""
    notes: list[str] = []
    errors: list[str] = []  # the resume's and --save's problems are independent: reported together
    path = args.load_checkpoint
    if path is not None:
        try:
            meta = read_meta(path)
            check_tp_size(meta, f"--load {path}", args.tensor_model_parallel_size)
            if not args.finetune and not meta.get("weights_only"):
                notes += _check_resume(args, meta, path)
        except ValueError as err:
            errors.append(str(err))
    if args.save:
        for check in (lambda: check_save_writable(args.save), lambda: check_save_target(args)):
            try:
                check()
            except ValueError as err:
                errors.append(str(err))
    raise_all(errors)
    return notes


def start_step(args: argparse.Namespace) -> int:
    """The step this run starts after: the resumed checkpoint's, or 0 (no checkpoint, weights only)."""
    path = args.load_checkpoint
    if path is None or args.finetune:
        return 0
    meta = read_meta(path)
    return 0 if meta.get("weights_only") else meta["step"]


def check_save_target(args: argparse.Namespace) -> None:
    """ValueError when ``--save`` holds complete checkpoints and this run does not continue from its newest:
    its saves would overwrite them or interleave with another run's (``latest`` jumping between the two)."""
    newest = newest_checkpoint(args.save)
    if newest is None:
        return
    step = start_step(args)
    if _same_path(args.load_checkpoint, newest) and step == step_of_checkpoint(newest):
        return
    name = os.path.basename(newest)
    if _same_path(args.load_checkpoint, newest):  # weights only (--finetune, converted, Megatron-LM's)
        raise ValueError(
            f"--save {args.save}: this run starts at step {step} from its newest checkpoint {name} (weights "
            f"only) and would write its checkpoints among the ones there: choose another --save"
        )
    if args.load_checkpoint is None:
        raise ValueError(
            f"--save {args.save} already holds checkpoints (newest {name}) and this run would start at "
            f"step 0 over them: resume with --load {args.save}, or choose another --save"
        )
    raise ValueError(
        f"--save {args.save} already holds checkpoints (newest {name}), but this run starts at step {step} "
        f"from {args.load_checkpoint} and would overwrite or mix with them: to continue them, --load "
        f"{args.save}; to start from {args.load_checkpoint} only while --save holds none, --load {args.save} "
        f"--pretrained-checkpoint {args.load_checkpoint}; or choose another --save"
    )


def check_save_writable(save: str) -> None:
    """``--save`` can take a checkpoint and no live run holds its lock; no directory is created before
    training starts.

    A write probe (read-only mounts, quotas and full disks fail it) runs in ``--save``, or in its nearest
    existing parent when it does not exist yet, once per node (``LOCAL_RANK`` 0: every rank writes its own
    shards there). The lock is probed on rank 0 only, before it takes it (``lock_save_dir``): NCCL's
    process group forms without waiting for every rank, so another rank may still be here when it is held.
    """
    probe = os.environ.get("LOCAL_RANK", "0") == "0"
    problem = output_problem("--save", save) if probe else writable_problem("--save", save)
    pointer = pointer_problem(save)
    if problem or pointer:
        raise ValueError(problem or f"--save {save}: {pointer}")
    if os.environ.get("RANK", "0") != "0":
        return
    lock = os.path.join(save, LOCK_FILE)
    holder = lock_holder(lock)
    if holder is not None:
        raise ValueError(locked_message(lock, holder, "--save"))


def _check_resume(args: argparse.Namespace, meta: dict, path: str) -> list[str]:
    step = meta["step"]
    if step >= args.train_iters:
        raise ValueError(
            f"--load {path} is at step {step}, at or past --train-iters {args.train_iters}: nothing to train "
            f"(raise --train-iters, or --finetune to start a new schedule from its weights)"
        )
    recorded = meta.get("schedule")
    if recorded is None:
        return [f"--load {path} records no schedule: the LR schedule flags are not checked against it"]
    if recorded["global_batch_size"] != args.global_batch_size:
        raise ValueError(
            f"--global-batch-size {args.global_batch_size} differs from checkpoint {path}'s "
            f"{recorded['global_batch_size']}: the data position is step x global batch, so samples would be "
            f"skipped or repeated (use --finetune to start over from its weights)"
        )
    _check_optimizer_groups(args, recorded, path)
    differ = [
        f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {recorded[k]})"
        for k in SCHEDULE_KEYS
        if k in recorded and getattr(args, k) != recorded[k]
    ]
    if not differ:
        return []
    if args.override_opt_param_scheduler:
        return ["--override-opt-param-scheduler: new schedule " + "; ".join(differ)]
    hint = " (--lr-decay-iters defaults to --train-iters)" if "--lr-decay-iters" in " ".join(differ) else ""
    raise ValueError(
        f"the LR schedule differs from checkpoint {path}: {'; '.join(differ)}{hint}; give "
        f"--override-opt-param-scheduler to use the new values"
    )


def _check_optimizer_groups(args: argparse.Namespace, recorded: dict, path: str) -> None:
    """--decoupled-lr gives the embedding and output layer optimizer groups of their own: a resume that turns
    it on or off cannot take the checkpoint's optimizer state (checkpoints older than the flag had none)."""
    if args.no_load_optim or (recorded.get("decoupled_lr") is None) == (args.decoupled_lr is None):
        return
    state = "without" if args.decoupled_lr is not None else "with"
    raise ValueError(
        f"--decoupled-lr {args.decoupled_lr}: checkpoint {path} was trained {state} it, so its optimizer "
        "state holds other parameter groups; add --no-load-optim (or --finetune) to start a new optimizer"
    )


def take_recorded_tokenizer(args: argparse.Namespace, required: bool, resume_only: bool = False) -> list[str]:
    """Without tokenizer flags: the tokenizer the ``--load`` checkpoint records (its files checked against
    the record), for the trainer (``resume_only``: a run's own checkpoint, not weights-only ones such as a
    conversion's) and the evaluation tools. Returns notes; ValueError when it is gone or changed and the
    command needs it (``required``)."""
    given = (args.tokenizer_model, args.tokenizer_type, args.vocab_file, args.merge_file)
    if any(flag is not None for flag in given) or not args.load:
        return []
    try:
        path = find_checkpoint(args.load)
    except CheckpointError:
        return []  # resolve_model_config names the problem
    if path is None:
        return []
    meta = read_meta(path)
    if resume_only and meta.get("weights_only"):
        return []
    try:
        found = recorded_tokenizer(meta)
    except ValueError as err:
        if required:
            raise ValueError(f"--load {path}: {err}: give --tokenizer-type/--tokenizer-model") from err
        return [f"--load {path}: {err}: running without a tokenizer"]
    if found is None:
        return []
    args.tokenizer_type = found.type
    if found.merge_file is None:
        args.tokenizer_model = found.model
        files = f"--tokenizer-model {found.model}"
    else:  # GPT2BPETokenizer: check_tokenizer_flags makes the vocab file its --tokenizer-model
        args.vocab_file, args.merge_file = found.model, found.merge_file
        files = f"--vocab-file {found.model} --merge-file {found.merge_file}"
    return [f"tokenizer from checkpoint {path}: --tokenizer-type {found.type} {files}"]
