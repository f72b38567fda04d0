"""The tools import only what their command needs: ``--help`` loads no torch, megatron-core, wandb or
transformers, and a conversion loads no megatron-core (nor wandb, which megatron-core pulls in)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.convert.convert_harness import save_tiny_hf

REPO = Path(__file__).resolve().parents[2]
TOOLS = sorted(p.name for p in (REPO / "tools").glob("*.py"))
HEAVY = ("torch", "megatron.core", "wandb", "transformers", "matplotlib")

# Runs in a fresh interpreter: each command in turn, then the heavy modules loaded so far, as JSON.
_PROBE = """
import json, runpy, sys
heavy, seen = {heavy!r}, {{}}
for name, argv in {commands!r}:
    sys.argv = argv
    run = runpy.run_path if argv[0].endswith(".py") else runpy.run_module
    try:
        run(argv[0], run_name="__main__")
    except SystemExit as stop:
        assert stop.code in (0, None), (name, stop.code)
    seen[name] = [m for m in heavy if m in sys.modules]
print(json.dumps(seen))
"""


def _loaded(commands: list[tuple[str, list[str]]]) -> tuple[dict[str, list[str]], str, str]:
    """``{command: heavy modules loaded after it}``, stdout and stderr, from one fresh interpreter."""
    code = _PROBE.format(heavy=HEAVY, commands=commands)
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout, proc.stderr


def test_help_of_every_tool_loads_no_heavy_package() -> None:
    commands = [(tool, [f"tools/{tool}", "--help"]) for tool in TOOLS]
    commands.append(("-m megatron_anchor.pretrain", ["megatron_anchor.pretrain", "--help"]))
    loaded, helps, _ = _loaded(commands)
    assert {name: found for name, found in loaded.items() if found} == {}
    assert "SPEC" not in helps  # the help texts say what they mean; users have no SPEC document


def test_conversion_loads_no_megatron_core_and_warns_nothing(tmp_path: Path) -> None:
    hf_dir = save_tiny_hf("llama", tmp_path / "hf")
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    script = "tools/convert_hf_checkpoint.py"
    loaded, _, stderr = _loaded([
        ("import", [script, "import", "--hf-dir", str(hf_dir), "--save", str(ckpt), "--quiet"]),
        ("export", [script, "export", "--load", str(ckpt), "--hf-dir", str(out), "--quiet"]),
    ])  # fmt: skip
    assert loaded == {"import": ["torch"], "export": ["torch"]}
    assert (out / "model.safetensors").is_file() and "arning" not in stderr, stderr
