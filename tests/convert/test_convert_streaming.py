"""Import and export stream: memory grows by a few tensors (or one output shard), not by the model's size."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

from safetensors.torch import save_file

from megatron_anchor.convert import export_hf_checkpoint, import_hf_checkpoint, shape_from_hf_config
from tests.convert.test_hf_mapping import random_hf_state

CONFIG = {
    "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 8, "hidden_size": 512,
    "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 1376, "vocab_size": 8000,
}


def _anon_bytes() -> int:
    """This process's anonymous resident memory (heap and the like; file-backed mmap pages excluded)."""
    with open("/proc/self/status") as f:
        return 1024 * next(int(line.split()[1]) for line in f if line.startswith("RssAnon:"))


@contextlib.contextmanager
def _peak_growth(result: list[int]):
    """Sample anonymous memory every 2 ms; append the peak growth over the start to ``result``."""
    base, peak, done = _anon_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _anon_bytes() - base)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield
    finally:
        done.set()
        sampler.join()
        result.append(peak[0])


def test_import_and_export_memory_is_bounded(tmp_path: Path) -> None:
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text(json.dumps(CONFIG))
    state = random_hf_state(shape_from_hf_config(CONFIG))
    model_bytes = sum(t.numel() * t.element_size() for t in state.values())  # ~126 MB in fp32
    largest = max(t.numel() * t.element_size() for t in state.values())  # the 16 MB embedding
    save_file(state, hf_dir / "model.safetensors")
    del state
    assert model_bytes > 6 * largest
    grown: list[int] = []
    with _peak_growth(grown):
        import_hf_checkpoint(str(hf_dir), str(tmp_path / "ckpt"), 2, progress=False)
    with _peak_growth(grown):
        export_hf_checkpoint(str(tmp_path / "ckpt"), str(tmp_path / "out"), max_shard_bytes=largest,
                             progress=False)
    assert grown[0] < 4 * largest, f"import grew anonymous memory by {grown[0] / 2**20:.0f} MiB"
    assert grown[1] < 6 * largest, f"export grew anonymous memory by {grown[1] / 2**20:.0f} MiB"
    assert len(list((tmp_path / "out").glob("*.safetensors"))) > 5
