"""Streaming reads and writes of Hugging Face safetensors directories (one tensor in memory at a time).

Reading opens each file with ``safe_open`` (memory-mapped) and copies out only the tensor asked for;
writing collects tensors into shards of at most ``max_shard_bytes`` and writes each shard when it is full,
with ``model.safetensors.index.json`` when there is more than one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from megatron_anchor._files import free_space
from megatron_anchor.data.tokenizers import GPT2_FILES

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# The weight files of a Hugging Face directory: one file, numbered shards, their index.
_WEIGHT_FILE = re.compile(r"model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?")
TOKENIZER_PATTERNS = (
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
    "generation_config.json", "chat_template*",
)


def read_hf_config(hf_dir: str | Path) -> dict:
    """``config.json`` of a HF model directory; a clear error when it is missing."""
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --hf-dir must be a Hugging Face model directory")
    return _read_json(path)


def _read_json(path: Path) -> dict:
    """A JSON file's object; ValueError naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def _open_safetensors(path: Path):
    """``safe_open`` of ``path``; ValueError naming the file when it is truncated or not safetensors."""
    try:
        return safe_open(path, framework="pt")
    except SafetensorError as err:
        raise ValueError(f"{path} is not a complete safetensors file ({err}): copy it again") from None


class SafetensorsReader:
    """Tensors of a HF directory by name: sharded (with an index) or one or more plain safetensors files."""

    def __init__(self, hf_dir: str | Path) -> None:
        self.dir = Path(hf_dir)
        index = self.dir / INDEX_NAME
        if index.is_file():
            weight_map = _read_json(index).get("weight_map")
            if not isinstance(weight_map, dict):
                raise ValueError(f"{index} has no 'weight_map' object")
            self.files = {name: self.dir / file for name, file in weight_map.items()}
            self.source = str(index)
        else:
            self.files = {}
            paths = sorted(self.dir.glob("*.safetensors"))
            if not paths:
                raise FileNotFoundError(f"no *.safetensors and no {INDEX_NAME} in {self.dir}")
            for path in paths:
                with _open_safetensors(path) as f:
                    self.files.update(dict.fromkeys(f.keys(), path))
            self.source = ", ".join(p.name for p in paths)
        self._stack = ExitStack()
        self._handles: dict[Path, object] = {}

    def _handle(self, name: str):
        if name not in self.files:
            raise KeyError(f"tensor {name!r} is missing from {self.dir} (looked in {self.source})")
        path = self.files[name]
        if path not in self._handles:
            if not path.is_file():
                raise FileNotFoundError(f"{path} (named for tensor {name!r} in {self.source}) does not exist")
            self._handles[path] = self._stack.enter_context(_open_safetensors(path))
        handle = self._handles[path]
        if name not in handle.keys():
            raise KeyError(f"tensor {name!r} is missing from {path} (where {self.source} places it)")
        return handle

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (a copy; the file stays memory-mapped)."""
        return self._handle(name).get_tensor(name)

    def meta(self, name: str) -> torch.Tensor:
        """A meta-device tensor with ``name``'s shape and dtype, read from the file header only."""
        sl = self._handle(name).get_slice(name)
        dtype = _SAFETENSORS_DTYPES[sl.get_dtype()]
        return torch.empty(sl.get_shape(), dtype=dtype, device="meta")

    def close(self) -> None:
        """Close every open file."""
        self._stack.close()
        self._handles.clear()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class ShardedSafetensorsWriter:
    """Write tensors into ``model-0000i-of-0000n.safetensors`` shards as they come, then the index."""

    def __init__(self, out_dir: str | Path, max_shard_bytes: int) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0
        self.removed: list[str] = []
        """The weight files of an earlier save that ``close`` deleted."""

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue ``tensor``; a full shard is written to disk (under a temporary name) right away."""
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = tensor.contiguous()
        self._pending_bytes += nbytes
        self.total_bytes += nbytes

    def _flush(self) -> None:
        path = self.dir / f"shard-{len(self._shards):05d}.tmp"
        try:
            save_file(self._pending, path, metadata={"format": "pt"})
        except SafetensorError as err:  # a full disk or quota: its I/O error, the file and the free space
            free = f"{free_space(str(self.dir))} free on {self.dir}"
            raise OSError(f"writing {path} failed: {err} ({free})") from None
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[str]:
        """Write the last shard, give shards their final names (and the index); returns the file names."""
        if self._pending or not self._shards:
            self._flush()
        n = len(self._shards)
        names = [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        for i, name in enumerate(names):
            os.replace(self.dir / f"shard-{i:05d}.tmp", self.dir / name)
        if n > 1:
            weight_map = {t: name for name, tensors in zip(names, self._shards) for t in tensors}
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map}
            (self.dir / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        self.removed = self._remove_earlier_weights({*names, INDEX_NAME} if n > 1 else set(names))
        return names

    def _remove_earlier_weights(self, written: set[str]) -> list[str]:
        """Delete the weight files (and index) an earlier save left in the directory, as transformers'
        ``save_pretrained`` does: a loader that follows a stale index would read the old shards."""
        stale = sorted(
            p.name for p in self.dir.iterdir() if _WEIGHT_FILE.fullmatch(p.name) and p.name not in written
        )
        for name in stale:
            (self.dir / name).unlink()
        return stale


def write_gpt2_tokenizer(vocab_file: str, merge_file: str, dst_dir: str | Path) -> list[str]:
    """Megatron's GPT2BPETokenizer files as a Hugging Face GPT-2 tokenizer in ``dst_dir``: vocab.json and
    merges.txt copied under those names, and a tokenizer_config.json naming the class (the exported
    config.json's model type names another). Returns the names written."""
    dst = Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    for source, name in zip((vocab_file, merge_file), GPT2_FILES):
        shutil.copy2(source, dst / name)
    (dst / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer"}) + "\n")
    return [*GPT2_FILES, "tokenizer_config.json"]


def copy_tokenizer_files(src_dir: str | Path, dst_dir: str | Path) -> list[str]:
    """Copy tokenizer and generation-config files from ``src_dir`` to ``dst_dir``; returns their names."""
    src, dst = Path(src_dir), Path(dst_dir)
    dst.mkdir(parents=True, exist_ok=True)
    copied = sorted({p.name for pattern in TOKENIZER_PATTERNS for p in src.glob(pattern) if p.is_file()})
    for name in copied:
        shutil.copy2(src / name, dst / name)
    return copied
