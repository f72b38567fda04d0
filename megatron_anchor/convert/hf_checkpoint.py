"""Import a Hugging Face Llama-family directory as a megatron_anchor checkpoint, and export one back.

Both directions stream: import reads one HF tensor group (one megatron-core tensor) at a time and DCP
writes its TP shards before the next is read; export reads one tensor's TP shards at a time and writes
safetensors shards of bounded size. Peak memory is about one shard plus the largest tensor, never the model.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from megatron_anchor._output_lock import OutputLock
from megatron_anchor.checkpoint import (
    LOCK_FILE,
    checkpoint_meta,
    newest_checkpoint,
    read_pointer,
    recorded_tokenizer,
    tokenizer_identity,
    trained_length,
)
from megatron_anchor.checkpoint.weights import CheckpointReader, write_weights_checkpoint
from megatron_anchor.convert.hf_config import (
    check_supported,
    export_hf_config,
    model_meta,
    rope_from_hf,
    rope_meta,
    shape_from_meta,
)
from megatron_anchor.convert.hf_io import (
    SafetensorsReader,
    ShardedSafetensorsWriter,
    copy_tokenizer_files,
    read_hf_config,
    write_gpt2_tokenizer,
)
from megatron_anchor.convert.hf_mapping import (
    ModelShape,
    merge_from_tp,
    shape_from_hf_config,
    split_for_tp,
    tensor_rules,
)
from megatron_anchor.model import pad_vocab_size
from megatron_anchor.rope import RopeScaling

HF_SUBDIR = "hf"  # config.json and tokenizer files of the source model, kept inside the checkpoint
KEEP = object()  # "no override" for rope_scaling (None means: remove the scaling)


@dataclass
class RopeOverride:
    """RoPE values that replace the source model's: ``rotary_base`` None keeps the base; ``rope_scaling``
    KEEP keeps the strategy, None removes it."""

    rotary_base: float | None = None
    rope_scaling: object = KEEP

    def apply(self, rope: dict) -> dict:
        """``rope`` (a ``meta["rope"]`` section) with the overrides applied."""
        out = dict(rope)
        if self.rotary_base is not None:
            out["rotary_base"] = float(self.rotary_base)
        if self.rope_scaling is not KEEP:
            scaling = self.rope_scaling
            out["rope_scaling"] = scaling.to_dict() if isinstance(scaling, RopeScaling) else scaling
        return out


def _dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else getattr(torch, name)


def import_hf_checkpoint(hf_dir: str, save_dir: str, tp: int = 1, *, make_vocab_size_divisible_by: int = 128,
                         dtype: str | None = None, rope: RopeOverride | None = None,
                         progress: bool = True) -> dict:
    """Convert ``hf_dir`` into ``save_dir/iter_0000000`` at TP size ``tp``; returns the written meta. Holds
    ``save_dir``'s run lock while it writes (a run writing there is refused, its files left alone)."""
    _check_no_checkpoint(save_dir)
    config = read_hf_config(hf_dir)
    check_supported(config, os.path.join(hf_dir, "config.json"))
    padded = pad_vocab_size(config["vocab_size"], make_vocab_size_divisible_by, tp)
    shape = shape_from_hf_config(config, padded_vocab_size=padded)
    target = _dtype(dtype)
    rules = {rule.mcore: rule for rule in tensor_rules(shape)}
    start = time.perf_counter()
    with SafetensorsReader(hf_dir) as reader:
        # Shapes first, from the file headers only: a missing tensor fails here, before anything is written.
        shard_meta = {}
        for name, rule in rules.items():
            full = rule.to_mcore([reader.meta(n) for n in rule.hf])
            shard_meta[name] = split_for_tp(name, full.to(target or full.dtype), tp, shape)
        bar = tqdm(total=len(rules), desc="import", unit="tensor", disable=not progress)

        def produce(name: str) -> list[torch.Tensor]:
            rule = rules[name]
            full = rule.to_mcore([reader.get(n) for n in rule.hf])
            bar.update()
            return split_for_tp(name, full.to(target or full.dtype), tp, shape)

        source_dtype = str(next(iter(shard_meta.values()))[0].dtype).removeprefix("torch.")
        meta = _import_meta(hf_dir, config, shape, tp, make_vocab_size_divisible_by, source_dtype, rope)
        os.makedirs(save_dir, exist_ok=True)
        lock = OutputLock(os.path.join(save_dir, LOCK_FILE), "--save")  # before removing any stale .tmp
        try:
            _check_no_checkpoint(save_dir)  # again: one may have been committed since
            path = write_weights_checkpoint(save_dir, shard_meta, produce, meta,
                                            finalize=lambda tmp: _keep_hf_files(hf_dir, config, tmp))
        finally:
            lock.release()
        bar.close()
    _summary("imported", len(rules), _nbytes(shard_meta), time.perf_counter() - start, path)
    return meta


def _check_no_checkpoint(save_dir: str) -> None:
    """FileExistsError when ``save_dir`` holds a pointer or a complete checkpoint (CheckpointError for a
    damaged pointer): an import writes only into an empty --save."""
    if not os.path.isdir(save_dir):
        return
    pointed = read_pointer(save_dir)
    found = pointed[0] if pointed is not None else newest_checkpoint(save_dir)
    if found is not None:
        raise FileExistsError(f"--save {save_dir} already holds a checkpoint ({found}): give an empty --save")


def _import_meta(hf_dir: str, config: dict, shape: ModelShape, tp: int, divisible_by: int, dtype: str,
                 rope: RopeOverride | None) -> dict:
    base, scaling, percent = rope_from_hf(config)
    record = {
        "model": model_meta(shape, config, divisible_by),
        "rope": (rope or RopeOverride()).apply(rope_meta(base, scaling, percent)),
    }
    return checkpoint_meta(
        step=0, consumed_samples=0, record=record,
        tokenizer=tokenizer_identity("HuggingFaceTokenizer", hf_dir, shape.vocab_size), schedule=None,
        sizes={"tp": tp, "cp": 1, "dp": 1, "world": tp}, weights_only=True,
        converted_from=os.path.abspath(hf_dir), dtype=dtype, transformer_impl="local", hf_config=config,
    )


def _keep_hf_files(hf_dir: str, config: dict, checkpoint_dir: str) -> None:
    """Copy the source's config and tokenizer files into ``checkpoint_dir/hf`` (used by the export)."""
    copy_tokenizer_files(hf_dir, os.path.join(checkpoint_dir, HF_SUBDIR))
    (Path(checkpoint_dir) / HF_SUBDIR / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _nbytes(shard_meta: dict[str, list[torch.Tensor]]) -> int:
    return sum(t.numel() * t.element_size() for shards in shard_meta.values() for t in shards)


def _summary(verb: str, n_tensors: int, nbytes: int, seconds: float, path: str, dtype: str = "") -> None:
    rate = nbytes / max(seconds, 1e-9) / 2**20
    size = f"{nbytes / 2**30:.3f} GiB in {seconds:.1f} s ({rate:.0f} MiB/s)"
    print(f"{verb} {n_tensors} {dtype + ' ' if dtype else ''}tensors, {size} -> {path}")


def _source_files(hf_source: str | None) -> tuple[dict | None, str | None, dict | None]:
    """(source meta or None, directory with config.json/tokenizer files or None, HF config or None)."""
    if hf_source is None:
        return None, None, None
    if os.path.isfile(os.path.join(hf_source, "config.json")):
        return None, hf_source, read_hf_config(hf_source)
    reader = CheckpointReader(hf_source)
    hf_dir = os.path.join(reader.path, HF_SUBDIR)
    return reader.meta, hf_dir if os.path.isdir(hf_dir) else None, reader.meta.get("hf_config")


_SHAPE_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                 "add_qkv_bias", "untie_embeddings_and_output_weights")


def _export_model_meta(meta: dict, source_meta: dict | None, source_config: dict | None, padded: int,
                       source_name: str) -> dict:
    """The checkpoint's recorded model section, checked against the source model's (``source_name``); the
    source's when the checkpoint records none (written before the model was recorded)."""
    source = (source_meta or {}).get("model")
    if source is None and source_config is not None:
        source = model_meta(shape_from_hf_config(source_config, padded), source_config, None)
    own = meta.get("model")
    if own is None and source is None:
        raise ValueError(
            "the checkpoint does not record its model shape: pass --hf-source (the converted checkpoint "
            "it was trained from, or the original Hugging Face directory)"
        )
    if own is None or source is None:
        return own or source
    for key in _SHAPE_FIELDS:
        mine, theirs = own.get(key), source.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            raise ValueError(f"{source_name} has {key} {theirs}, the checkpoint {mine}: "
                             f"it is not the model this checkpoint was trained from")
    return {"architecture": source.get("architecture"), **own, "vocab_size": _vocab(own, source, padded)}


def _vocab(own: dict, source: dict, padded: int) -> int:
    """The exported vocabulary: the larger of the checkpoint's and the source model's (a run trained with a
    smaller tokenizer keeps the model's rows), which must fit the stored rows."""
    mine, theirs = own["vocab_size"], source.get("vocab_size") or own["vocab_size"]
    vocab = max(mine, theirs)
    if vocab > padded:
        raise ValueError(f"the source model's vocabulary of {theirs} exceeds the checkpoint's {padded} rows")
    if mine != theirs:
        print(f"note: the checkpoint records a vocabulary of {mine}, the source model {theirs}: "
              f"{vocab} rows exported")
    return vocab


def _export_rope(meta: dict, rope: RopeOverride | None) -> dict:
    if "rope" in meta:
        out = (rope or RopeOverride()).apply(meta["rope"])
        old = meta["rope"]
        changed = [f"{k} {out[k]} (checkpoint: {old.get(k)})" for k in out if out[k] != old.get(k)]
        if changed:
            print("note: RoPE changed on purpose: " + "; ".join(changed))
        return out
    if rope is None or rope.rotary_base is None:
        raise ValueError(
            "the checkpoint does not record its RoPE: pass --rotary-base (and --rope-scaling) "
            "as used in training"
        )
    scaling = None if rope.rope_scaling is KEEP else rope.rope_scaling
    return RopeOverride(rope.rotary_base, scaling).apply({"rotary_percent": 1.0})


def export_hf_checkpoint(load: str, out_dir: str, *, hf_source: str | None = None, dtype: str | None = None,
                         rope: RopeOverride | None = None, max_position_embeddings: int | None = None,
                         max_shard_bytes: int = 5 * 2**30, progress: bool = True) -> list[str]:
    """Write checkpoint ``load`` as a HF directory ``out_dir`` (config, safetensors, tokenizer files). The
    weights keep the checkpoint's dtype unless ``dtype`` is given."""
    reader = CheckpointReader(load)
    reader.verify()
    meta = reader.meta
    source_meta, source_dir, source_config = _source_files(hf_source)
    hf_config = meta.get("hf_config") or source_config
    padded = reader.shard_shape("embedding.word_embeddings.weight")[0] * reader.tp
    source_name = f"--hf-source {hf_source}" if hf_source else "the source model recorded in the checkpoint"
    model = _export_model_meta(meta, source_meta, source_config or meta.get("hf_config"), padded, source_name)
    shape = shape_from_meta(model)
    rules = tensor_rules(shape)
    reader.check_names([rule.mcore for rule in rules])
    rope_section = _export_rope(meta, rope)
    target = _dtype(dtype)
    start = time.perf_counter()
    writer = ShardedSafetensorsWriter(out_dir, max_shard_bytes)
    written: set[torch.dtype] = set()
    for rule in tqdm(rules, desc="export", unit="tensor", disable=not progress):
        full = merge_from_tp(rule.mcore, reader.shards(rule.mcore), shape)
        try:
            parts = rule.to_hf(full)
        except RuntimeError as err:
            stored = tuple(full.shape)
            raise ValueError(f"{rule.mcore}: stored shape {stored} does not fit {shape}: {err}") from err
        for name, tensor in zip(rule.hf, parts):
            writer.add(name, tensor.to(target or tensor.dtype))
            written.add(target or tensor.dtype)
    files = writer.close()
    out_dtype = _dtype_note(written, dtype, hf_config)
    positions = max_position_embeddings or _max_positions(meta, model, hf_config)
    config = export_hf_config(model, rope_section, hf_config, positions, out_dtype)
    (Path(out_dir) / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    copied = _copy_tokenizer(meta, reader.path, source_dir, out_dir)
    _summary("exported", len(rules), writer.total_bytes, time.perf_counter() - start, out_dir, out_dtype)
    if writer.removed:
        print(f"note: removed the weight files of an earlier save in {out_dir}: {', '.join(writer.removed)}")
    return [*files, "config.json", *copied]


def _dtype_note(written: set[torch.dtype], asked: str | None, hf_config: dict | None) -> str:
    """The dtype name the weights were written in; a note when it is the checkpoint's and differs from the
    source model's."""
    name = str(max(written, key=lambda d: d.itemsize)).removeprefix("torch.")
    source = (hf_config or {}).get("dtype") or (hf_config or {}).get("torch_dtype")
    if asked is None and source and source != name:
        print(f"note: weights written in {name}, the checkpoint's dtype (the source model's: {source}; "
              f"--dtype {source} to write that)")
    return name


def _max_positions(meta: dict, model: dict, hf_config: dict | None) -> int | None:
    """The longer of the source model's context and the length the checkpoint was trained at."""
    context = model.get("max_position_embeddings") or (hf_config or {}).get("max_position_embeddings")
    lengths = [v for v in (context, trained_length(meta)) if v]
    return max(lengths) if lengths else None


def _copy_tokenizer(meta: dict, checkpoint_dir: str, source_dir: str | None, out_dir: str) -> list[str]:
    """Copy the tokenizer the checkpoint was written with (else the converted model's copy inside it, else
    ``--hf-source``'s) into ``out_dir``; returns the names written and says where they came from."""
    try:
        recorded = recorded_tokenizer(meta)
    except ValueError as err:
        print(f"note: checkpoint {checkpoint_dir}: {err}")
        recorded = None
    local = os.path.join(checkpoint_dir, HF_SUBDIR)
    if recorded is not None and recorded.merge_file is not None:
        copied = write_gpt2_tokenizer(recorded.model, recorded.merge_file, out_dir)
        origin = f"{recorded.model} and {recorded.merge_file} (the checkpoint's tokenizer, {recorded.type})"
    elif recorded is not None and os.path.isfile(recorded.model):
        # A SentencePiece model file: Hugging Face Llama repositories keep theirs as tokenizer.model.
        shutil.copy2(recorded.model, os.path.join(out_dir, "tokenizer.model"))
        copied = ["tokenizer.model"]
        origin = f"{recorded.model} (the checkpoint's tokenizer, {recorded.type})"
    else:
        candidates = [(recorded.model, "the checkpoint's tokenizer")] if recorded else []
        candidates += [(local, "the converted model's copy"), (source_dir, "--hf-source")]
        copied, origin = [], None
        for directory, what in candidates:
            if directory and os.path.isdir(directory):
                copied, origin = copy_tokenizer_files(directory, out_dir), f"{directory} ({what})"
            if copied:
                break
    if copied:
        print(f"tokenizer files {', '.join(copied)} from {origin}")
    else:
        print("note: no tokenizer files written: the checkpoint records no tokenizer (give --hf-source with "
              "the original model directory)")
    return copied


__all__ = ["KEEP", "RopeOverride", "export_hf_checkpoint", "import_hf_checkpoint"]
