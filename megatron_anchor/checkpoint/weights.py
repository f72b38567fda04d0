"""Model weights of a checkpoint: written tensor by tensor (conversions), read by name (export), loaded into
a model (training, evaluation).

This project's checkpoints are a DCP checkpoint of ``{"tp{r}": {"model": state, ...}}`` plus ``meta.json``
(``layout``, ``meta``); ``meta["weights_only"]`` marks one without optimizer or RNG state (a run starts from
it at step 0). ``load_verified_weights`` is the one entry point that loads a model's weights, from this
project's checkpoints (TP size and checksums checked first) or Megatron-LM's (``megatron``).
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import warnings
from collections.abc import Callable, Iterator

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import (
    CheckpointException,
    DefaultLoadPlanner,
    DefaultSavePlanner,
    FileSystemReader,
)
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)

from megatron_anchor.checkpoint.integrity import (
    checkpoint_files,
    dcp_failure,
    describe_files,
    verify_checkpoint,
)
from megatron_anchor.checkpoint.layout import (
    META_FILE,
    TMP_SUFFIX,
    CheckpointError,
    check_tp_size,
    commit_checkpoint,
    is_megatron_checkpoint,
    iter_dir_name,
    read_meta,
    remove_stale_tmp,
    resolve_checkpoint,
    write_meta,
)
from megatron_anchor.checkpoint.names import EXTRA_STATE, TE_RENAMES, te_name


@contextlib.contextmanager
def _one_process() -> Iterator[None]:
    """DCP without a process group (``no_dist=True``), minus its warning that it assumes one process: the
    converter asks for exactly that."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninit")
        yield


def _key(tp_rank: int, name: str) -> str:
    return f"tp{tp_rank}.model.{name}"  # DCP's flattened form of {"tp{r}": {"model": {name: ...}}}


def weights_only_refusal(err: Exception) -> str:
    """The line of torch.load's weights-only refusal that names what it would not build (else its first)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
    return next((line for line in lines if "GLOBAL" in line), lines[0])


class PlainDataLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner whose pickled items (an optimizer's param_groups) are read with torch's
    weights-only unpickler: a crafted checkpoint builds tensors, numbers and containers, never runs code."""

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        """Unpickle the item weights-only (CheckpointError naming it otherwise), then store it as DCP does."""
        try:
            plain = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            fqn = read_item.dest_index.fqn
            raise CheckpointError(f"its item {fqn} is not plain data ({weights_only_refusal(err)})") from None
        checked = io.BytesIO()  # DCP's own load_bytes unpickles without the weights-only check
        torch.save(plain, checked)
        checked.seek(0)
        super().load_bytes(read_item, checked)


class _LazySavePlanner(DefaultSavePlanner):
    """A save planner whose state dict holds meta tensors: data is produced by ``produce`` at write time.

    DCP's writer asks ``resolve_data`` for one item at a time, so only the tensor being written (and the
    shards of the full tensor it came from) is in memory.
    """

    def __init__(self, produce: Callable[[str], torch.Tensor]) -> None:
        super().__init__(flatten_state_dict=False)
        self._produce = produce

    def resolve_data(self, write_item):
        return self._produce(write_item.index.fqn)


def write_weights_checkpoint(
    save_dir: str,
    shard_meta: dict[str, list[torch.Tensor]],
    produce_shards: Callable[[str], list[torch.Tensor]],
    meta: dict,
    finalize: Callable[[str], None] | None = None,
) -> str:
    """Write ``save_dir/iter_0000000`` (+ ``latest``); returns its path.

    ``shard_meta[name]``: a meta tensor per TP rank (shapes, dtypes); ``produce_shards(name)``: the real
    shards, called once per name in ``shard_meta``'s order. ``finalize(tmp_dir)`` may add files before the
    checkpoint is moved into place.
    """
    state: dict[str, torch.Tensor] = {}
    for name, metas in shard_meta.items():  # name-major order: a name's TP shards are written together
        state.update({_key(r, name): t for r, t in enumerate(metas)})
    cache: dict[str, list[torch.Tensor]] = {}

    def produce(fqn: str) -> torch.Tensor:
        rank_part, _, name = fqn.split(".", 2)
        if name not in cache:
            cache.clear()
            cache[name] = produce_shards(name)
        return cache[name][int(rank_part[2:])].contiguous()

    final = os.path.join(save_dir, iter_dir_name(0))
    tmp = final + TMP_SUFFIX
    remove_stale_tmp(save_dir)
    os.makedirs(tmp)
    # DCP's writer keeps every tensor of a file until the file is finished: a file per tensor keeps one
    # in memory. One thread and no copy-ahead write the items in state-dict order (the copy-ahead loader,
    # used when CUDA is present, sorts them by size), so a name's TP shards follow one another in the cache.
    writer = dcp.FileSystemWriter(tmp, single_file_per_rank=False, thread_count=1, per_thread_copy_ahead=0)
    with _one_process():
        try:
            dcp.save(state, storage_writer=writer, planner=_LazySavePlanner(produce), no_dist=True)
        except CheckpointException as err:  # a full disk or quota: one line, the errno and the free space
            raise CheckpointError(dcp_failure(err, tmp)) from None
    if finalize is not None:
        finalize(tmp)
    write_meta(tmp, dict(meta, files=describe_files(tmp, checkpoint_files(tmp))))
    commit_checkpoint(tmp, final)
    return final


class CheckpointReader:
    """Full (TP-merged) model tensors of one of this project's checkpoints, read by name with DCP; tolerates
    TE names. CheckpointError for a Megatron-LM one, whose stacked layers export cannot read."""

    def __init__(self, path: str) -> None:
        self.path = resolve_checkpoint(path)
        if is_megatron_checkpoint(self.path):
            raise CheckpointError(
                f"{self.path} is a Megatron-LM torch_dist checkpoint, which export does not read: train "
                f"from it with --pretrained-checkpoint {self.path} and --save, then export that run's "
                f"checkpoint"
            )
        self.meta = read_meta(self.path)
        self.tp = int(self.meta["tp"])
        self._items = FileSystemReader(self.path).read_metadata().state_dict_metadata

    def verify(self) -> None:
        """Check every file's size and checksum against the metadata (CheckpointError naming the file)."""
        verify_checkpoint(self.path, self.meta)

    def check_names(self, names: list[str]) -> None:
        """CheckpointError if the checkpoint holds model tensors other than ``names`` (local-spec names)."""
        _check_no_extra(self.path, set(_stored(self._items, 0)), {self.stored_name(n) for n in names})

    def stored_name(self, name: str) -> str:
        """The name under which local-spec tensor ``name`` is stored (its TE name in a TE-trained run)."""
        for candidate in (name, te_name(name)):
            if _key(0, candidate) in self._items:
                return candidate
        raise KeyError(f"tensor {name!r} is missing from checkpoint {self.path} (no {_key(0, name)!r})")

    def shard_shape(self, name: str) -> tuple[int, ...]:
        """The stored shape of TP rank 0's shard of ``name`` (from the metadata; nothing is read)."""
        return tuple(self._items[_key(0, self.stored_name(name))].size)

    def shards(self, name: str, dtype: torch.dtype | None = None) -> list[torch.Tensor]:
        """The ``tp`` shards of ``name``, loaded in one DCP read (converted to ``dtype`` when given)."""
        stored = self.stored_name(name)
        state = {}
        for r in range(self.tp):
            info = self._items[_key(r, stored)]
            state[_key(r, stored)] = torch.empty(info.size, dtype=dtype or info.properties.dtype)
        with _one_process():
            dcp.load(state, storage_reader=FileSystemReader(self.path), no_dist=True)
        return [state[_key(r, stored)] for r in range(self.tp)]


def _stored(items, tp_rank: int) -> dict[str, tuple[int, ...]]:
    """``{name: stored shape}`` of TP rank ``tp_rank``'s model tensors in DCP metadata ``items``."""
    prefix = f"tp{tp_rank}.model."
    return {k[len(prefix):]: tuple(v.size) for k, v in items.items() if k.startswith(prefix)}


def _edited(path: str) -> str:
    meta = os.path.join(path, META_FILE)
    return f"the model built from {meta} and the flags does not match the tensors beside it (was it edited?)"


def _check_no_extra(path: str, stored: set[str], wanted: set[str]) -> None:
    extra = sorted(stored - wanted)
    if extra:
        raise CheckpointError(
            f"checkpoint {path} holds {len(extra)} tensor(s) this model does not have, e.g. {extra[0]!r}: "
            f"{_edited(path)}"
        )


def _check_shapes(path: str, state: dict, stored: dict[str, tuple[int, ...]]) -> None:
    """CheckpointError naming ``meta.json`` and the first tensor whose stored shape the model's differs from
    (DCP's own error names neither)."""
    for name, value in state.items():
        if tuple(value.shape) != stored[name]:
            raise CheckpointError(
                f"tensor {name} is stored as {list(stored[name])}, the model's is {list(value.shape)}: "
                f"{_edited(path)}"
            )


def load_model_weights(path: str, model: torch.nn.Module, tp_rank: int) -> dict:
    """Load only the model weights of checkpoint ``path`` into ``model`` (plain, DDP or FSDP2); returns meta.

    Collective when torch.distributed is initialised. Every model tensor must be in the checkpoint with its
    shape and every checkpoint tensor in the model (CheckpointError naming ``meta.json`` otherwise);
    ``_extra_state`` entries (FP8 metadata of TE layers, ``None`` without FP8) are not weights and are left
    as they are; the norms are found under either spec's name. Checksums are the caller's to verify
    (``verify_checkpoint``).
    """
    path = resolve_checkpoint(path)
    meta = read_meta(path)
    stored = _stored(FileSystemReader(path).read_metadata().state_dict_metadata, tp_rank)
    msd = {k: v for k, v in get_model_state_dict(model).items() if not k.endswith(EXTRA_STATE)}
    state = {_stored_as(name, stored, path): value for name, value in msd.items()}
    _check_no_extra(path, set(stored), set(state))
    _check_shapes(path, state, stored)
    dcp.load({f"tp{tp_rank}": {"model": state}}, checkpoint_id=path, planner=DefaultLoadPlanner())
    # Not strict: the _extra_state entries are absent on purpose (every other name was checked above).
    set_model_state_dict(model, msd, options=StateDictOptions(strict=False))
    return meta


def load_verified_weights(path: str, model: torch.nn.Module, tp: int, tp_rank: int) -> dict:
    """Load the model weights of checkpoint ``path`` (a resolved checkpoint directory) into ``model``;
    returns its meta (collective). This project's checkpoints: TP size and every file's checksum checked
    first. Megatron-LM's: read through megatron-core's ``dist_checkpointing`` into the unwrapped model."""
    if is_megatron_checkpoint(path):
        from megatron_anchor.checkpoint.megatron import load_megatron_weights

        load_megatron_weights(path, model)
        return read_meta(path)
    meta = read_meta(path)
    check_tp_size(meta, f"checkpoint {path}", tp)
    verify_checkpoint(path, meta)
    load_model_weights(path, model, tp_rank)
    return meta


def _stored_as(name: str, stored: dict, path: str) -> str:
    if name in stored:
        return name
    for local, te in TE_RENAMES.items():  # a TE model reading a local-spec checkpoint, or the reverse
        for a, b in ((te, local), (local, te)):
            if name.endswith(a) and name[: -len(a)] + b in stored:
                return name[: -len(a)] + b
    raise CheckpointError(f"model tensor {name!r} is missing from checkpoint {path}: {_edited(path)}")
