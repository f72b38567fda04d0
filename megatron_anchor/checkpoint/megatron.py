"""Megatron-LM ``torch_dist`` checkpoints as starting weights: the model read from its arguments, the tensors
through megatron-core's own ``dist_checkpointing``.

Such a checkpoint (Megatron-LM ``--ckpt-format torch_dist``, the default) is a directory ``iter_NNNNNNN/``
holding megatron-core's ``metadata.json``, ``common.pt`` (Megatron-LM's ``args`` Namespace, ``iteration``,
``checkpoint_version``, ...) and DCP files of the GPTModel's sharded state dict: one tensor per key, the
layers stacked (``decoder.layers.self_attention.linear_qkv.weight`` is ``[layers, ...]``), the norms under
Transformer Engine's names whatever the spec. This project's model is a megatron-core GPTModel, so its own
``sharded_state_dict()`` addresses those tensors and megatron-core reshards them to any TP size.

Sources: Megatron-LM core_v0.16.0 ``megatron/training/checkpointing.py`` (``generate_state_dict``,
``save_checkpoint``), ``megatron/training/arguments.py`` and
``megatron/core/transformer/transformer_config.py`` (the argument names below: 0.16 names two of them
``layernorm_epsilon`` and ``layernorm_zero_centered_gamma``, core_v0.15.0 and earlier ``norm_epsilon`` and
``apply_layernorm_1p``; both are read).
"""

from __future__ import annotations

import argparse
import os
import pickle
import types
import warnings

import torch

from megatron_anchor.checkpoint.layout import (
    MEGATRON_COMMON,
    CheckpointError,
    step_of_checkpoint,
)
from megatron_anchor.checkpoint.meta import FORMAT_VERSION
from megatron_anchor.checkpoint.names import EXTRA_STATE
from megatron_anchor.model.config_record import SHAPE_KEYS, flag_setting, rope_record
from megatron_anchor.rope.scaling import MEGATRON_LLAMA3_SCALING, RopeScaling

# Megatron-LM argument -> this project's model-record key, where the two agree in meaning.
_SAME_MEANING = (
    "num_layers",
    "hidden_size",
    "ffn_hidden_size",
    "num_attention_heads",
    "add_qkv_bias",
    "untie_embeddings_and_output_weights",
    "init_method_std",
    "hidden_dropout",
    "make_vocab_size_divisible_by",
    "vocab_size",
    "padded_vocab_size",
)
# Architecture arguments and the value this model has. A key the model record lists among SHAPE_KEYS is
# compared like any other recorded shape; any other must have the value here.
_BUILT = {
    "normalization": "RMSNorm",
    "swiglu": True,
    "add_bias_linear": False,
    "position_embedding_type": "rope",
    "apply_layernorm_1p": False,
    "qk_layernorm": False,
    "num_experts": None,
    "multi_latent_attention": False,
}
# The architecture arguments an error states this model's value of.
_STATED = ("normalization", "swiglu", "add_bias_linear", "position_embedding_type")
_RENAMED = {"norm_epsilon": "layernorm_epsilon", "apply_layernorm_1p": "layernorm_zero_centered_gamma"}


class _Opaque:
    """Stands in for a class ``common.pt`` names that the model record never reads (an enum, a config)."""

    def __init__(self, *args, **kwargs) -> None:
        self.args = args

    def __setstate__(self, state) -> None:
        self.state = state


class _ArgsUnpickler(pickle.Unpickler):
    """Builds only plain values, tensors and Namespaces; any other class becomes an inert ``_Opaque``, so
    reading the arguments neither runs code from the file nor imports megatron-core."""

    _ALLOWED = {
        ("argparse", "Namespace"),
        ("types", "SimpleNamespace"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("torch", "Size"),
        ("torch", "device"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("pathlib", "PosixPath"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return type(name, (_Opaque,), {"__module__": f"opaque.{module}"})


def _restricted_load(file, **kwargs):
    """``pickle.load`` through ``_ArgsUnpickler``: torch.load calls it for the records it reads outside its
    Unpickler (the legacy format's magic number, protocol and system info)."""
    return _ArgsUnpickler(file, **kwargs).load()


# The pickle module torch.load reads common.pt with: every object it builds goes through _ArgsUnpickler.
_PICKLE = types.ModuleType("megatron_args_pickle")
_PICKLE.Unpickler = _ArgsUnpickler
_PICKLE.load = _restricted_load

# (path, inode, mtime, size) of common.pt -> its meta: each version read once per process
_CACHE: dict[tuple, dict] = {}
# A zip file's first local header (torch.serialization reads a file starting with it in the zip format).
_ZIP_SIGNATURE = b"PK\x03\x04"


def read_common(checkpoint_dir: str) -> dict:
    """``common.pt`` of a Megatron-LM checkpoint (``args``, ``iteration``, ...); CheckpointError naming it."""
    path = os.path.join(checkpoint_dir, MEGATRON_COMMON)
    try:
        with open(path, "rb") as file:
            # megatron-core writes torch's zip format, never the legacy one. torch.load tells them apart by
            # the signature at the start (zipfile.is_zipfile looks for the directory at the end: a pickle
            # with an archive appended passes it and is then read in the legacy format).
            if file.read(len(_ZIP_SIGNATURE)) != _ZIP_SIGNATURE:
                raise CheckpointError(f"{path}: not a megatron-core common state (not torch's zip format)")
            file.seek(0)
            common = torch.load(file, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except CheckpointError:
        raise
    except Exception as err:  # a damaged file fails in zipfile, pickle or torch alike
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"{path}: not a readable megatron-core common state ({reason})") from None
    if not isinstance(common, dict):
        raise CheckpointError(f"{path}: not a megatron-core common state (a dict is expected)")
    return common


def megatron_meta(checkpoint_dir: str) -> dict:
    """A ``meta.json``-shaped description of a Megatron-LM checkpoint (``meta`` module): the model and RoPE
    from its ``args`` where present, ``weights_only`` (a run starts from it at step 0), ``tp`` None (any TP
    size loads it). CheckpointError when the arguments describe a model this project cannot build."""
    stat = os.stat(os.path.join(checkpoint_dir, MEGATRON_COMMON))
    key = (os.path.realpath(checkpoint_dir), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if key not in _CACHE:
        _CACHE[key] = _meta_from_common(checkpoint_dir, read_common(checkpoint_dir))
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in _CACHE[key].items()}


def _meta_from_common(checkpoint_dir: str, common: dict) -> dict:
    args = common.get("args")
    args = vars(args) if isinstance(args, (argparse.Namespace, types.SimpleNamespace)) else {}
    iteration = common.get("iteration", step_of_checkpoint(checkpoint_dir))
    model, rope = (_model_record(args), _rope_record(args)) if args else ({}, {})
    if args:
        _check_buildable(model, args, checkpoint_dir)
    return {
        "format": FORMAT_VERSION,
        "step": 0,
        "consumed_samples": 0,
        "weights_only": True,
        "tp": None,
        "model": model,
        "rope": rope,
        "tokenizer": _tokenizer_record(args),
        # the length it was trained at (trained_length); the rest of a schedule a weights-only start ignores
        "schedule": {"seq_length": args["seq_length"]} if args.get("seq_length") else None,
        "converted_from": os.path.abspath(checkpoint_dir),
        "megatron": {
            "iteration": iteration,
            "tensor_model_parallel_size": args.get("tensor_model_parallel_size"),
            "pipeline_model_parallel_size": args.get("pipeline_model_parallel_size"),
        },
    }


def _tokenizer_record(args: dict) -> dict | None:
    """The tokenizer Megatron-LM's arguments name (GPT2BPETokenizer: --vocab-file and --merge-file), with
    no CRC (Megatron-LM records none)."""
    if not args.get("tokenizer_type"):
        return None
    record = {"type": args["tokenizer_type"], "model": args.get("tokenizer_model"),
              "vocab_size": args.get("vocab_size"), "crc32": None}  # fmt: skip
    if args["tokenizer_type"] == "GPT2BPETokenizer":
        record.update(model=args.get("vocab_file"), merge_file=args.get("merge_file"))
    return record


def _arg(args: dict, name: str):
    return args.get(name, args.get(_RENAMED.get(name, name)))


def _model_record(args: dict) -> dict:
    """The ``model`` section: this project's keys, plus the architecture arguments under Megatron's names."""
    model = {key: args.get(key) for key in _SAME_MEANING}
    gqa = args.get("group_query_attention") and args.get("num_query_groups")
    model["num_query_groups"] = args["num_query_groups"] if gqa else args.get("num_attention_heads")
    model["norm_epsilon"] = _arg(args, "norm_epsilon")
    model.update({key: _arg(args, key) for key in _BUILT})
    model["kv_channels"] = args.get("kv_channels")
    return model


def _rope_record(args: dict) -> dict:
    scaling = None
    if args.get("use_rope_scaling"):
        factor = float(args.get("rope_scaling_factor", 8.0))
        scaling = RopeScaling("llama3", factor=factor, **MEGATRON_LLAMA3_SCALING)
    elif args.get("rotary_seq_len_interpolation_factor"):
        scaling = RopeScaling("linear", factor=float(args["rotary_seq_len_interpolation_factor"]))
    base = args.get("rotary_base", 10000)
    return rope_record(base, args.get("rotary_percent", 1.0), bool(args.get("rotary_interleaved")), scaling)


def _check_buildable(model: dict, args: dict, path: str) -> None:
    """CheckpointError listing every architecture argument of ``args`` this model cannot take."""
    bad = [
        flag_setting(key, model[key])
        for key, built in _BUILT.items()
        if key not in SHAPE_KEYS and (key in args or _RENAMED.get(key) in args) and model[key] != built
    ]
    heads, hidden, channels = model["num_attention_heads"], model["hidden_size"], model["kv_channels"]
    if channels is not None and heads and hidden and channels != hidden // heads:
        bad.append(f"--kv-channels {channels} (not --hidden-size / --num-attention-heads)")
    if bad:
        built = ", ".join(flag_setting(k, _BUILT[k]) for k in _STATED if k not in SHAPE_KEYS)
        raise CheckpointError(
            f"Megatron-LM checkpoint {path} was trained with {', '.join(bad)}: this model is built with "
            f"{built}, so its weights cannot be loaded"
        )


def _without_extra_state(sharded: dict) -> dict:
    """The model's sharded state dict without ``_extra_state`` (TE's FP8 metadata: not weights)."""
    return {k: v for k, v in sharded.items() if not k.endswith(EXTRA_STATE)}


def _tensor_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """``{checkpoint key: global shape}`` of every tensor ``model`` stores (factories applied)."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    sharded = _without_extra_state(model.sharded_state_dict())
    apply_factories(sharded)
    return {t.key: tuple(t.global_shape) for t in nested_values(sharded) if isinstance(t, ShardedTensor)}


def _check_tensors(path: str, model: torch.nn.Module) -> None:
    """CheckpointError naming the first model tensor missing from checkpoint ``path`` or stored with another
    shape, or a stored model tensor (a key under one of the model's top-level modules) the model lacks."""
    from megatron.core.dist_checkpointing import load_tensors_metadata

    wanted = _tensor_shapes(model)
    stored = {k: tuple(v.global_shape) for k, v in load_tensors_metadata(path).items()}
    roots = {k.split(".")[0] for k in wanted}
    problems = [f"{k} is missing" for k in wanted if k not in stored]
    problems += [f"{k} is stored as {list(stored[k])}, the model's is {list(s)}"
                 for k, s in wanted.items() if k in stored and stored[k] != s]  # fmt: skip
    problems += [f"{k} is not in this model" for k in stored if k.split(".")[0] in roots and k not in wanted]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(
            f"Megatron-LM checkpoint {path}: tensor {problems[0]}{more}: the model flags do not describe it"
        )


def load_megatron_weights(path: str, model: torch.nn.Module) -> None:
    """Load the weights of Megatron-LM checkpoint ``path`` into ``model``, an unwrapped megatron-core
    GPTModel of this rank (before DDP/FSDP2), with megatron-core's ``dist_checkpointing.load`` (collective:
    every rank of the job calls it)."""
    from megatron.core import dist_checkpointing

    _check_tensors(path, model)
    with warnings.catch_warnings():  # megatron-core's calls of torch APIs torch deprecates: nothing to act on
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        loaded = dist_checkpointing.load(_without_extra_state(model.sharded_state_dict()), path)
    weights = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    result = model.load_state_dict(weights, strict=False)
    missing = [k for k in result.missing_keys if "_extra_state" not in k]
    if missing:
        raise CheckpointError(f"Megatron-LM checkpoint {path}: {missing[0]} was not loaded")
