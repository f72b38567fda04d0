"""The conversion and evaluation commands of the README ("Checkpoints, conversion and evaluation") and of
examples/README.md run as written, with the user's model directory replaced by a tiny local one: the
conversions run for real; the evaluations resolve every flag (model and tokenizer from the checkpoint, the
output directory probed), which is all they do before loading the weights."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from tests.convert.convert_harness import save_tiny_hf
from tests.training.packed_data import write_hf_tokenizer
from tools import bf16_rope_deviation, convert_hf_checkpoint, eval_passkey

REPO = Path(__file__).resolve().parents[2]
SECTIONS = [
    (REPO / "README.md", "## Checkpoints, conversion and evaluation"),
    (REPO / "examples" / "README.md", ""),
]
TOOLS = {"convert_hf_checkpoint.py", "eval_passkey.py", "bf16_rope_deviation.py"}
# The checkpoint a training run would write between the conversion and the evaluation: a copy stands in.
TRAINED = {"ckpt/llama2-64k": "ckpt/llama2-tp2", "runs/llama2-7b-64k": "checkpoints/llama2-7b-tp2"}


def readme_commands(path: Path, heading: str) -> list[list[str]]:
    """The tool invocations (``tools/X.py`` and its flags) in the bash blocks of ``path``'s section."""
    text = path.read_text()
    if heading:
        text = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            start = next((i for i, a in enumerate(argv) if Path(a).name in TOOLS), None)
            if start is not None:
                commands.append(argv[start:])
    return commands


def test_the_sections_hold_every_step() -> None:
    tools = [[Path(argv[0]).name for argv in readme_commands(*section)] for section in SECTIONS]
    expected = {"convert_hf_checkpoint.py", "eval_passkey.py", "bf16_rope_deviation.py"}
    assert all(set(found) == expected for found in tools), tools


def test_readme_commands_run_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    hf_dir = save_tiny_hf("llama", tmp_path / "models" / "Llama-2-7b-hf")
    write_hf_tokenizer(hf_dir, vocab=100)  # a loadable tokenizer in place of the stand-in files
    for section in SECTIONS:
        for argv in readme_commands(*section):
            argv = [a.replace("/models/", f"{tmp_path}/models/") for a in argv]
            for trained, converted in TRAINED.items():
                if Path(converted).exists() and not Path(trained).exists():
                    shutil.copytree(converted, trained)
            tool, flags = Path(argv[0]).name, argv[1:]
            if tool == "convert_hf_checkpoint.py":
                assert convert_hf_checkpoint.main(flags) == 0, (argv, capsys.readouterr().err)
                continue
            try:
                args = (eval_passkey if tool == "eval_passkey.py" else bf16_rope_deviation).parse_args(flags)
            except SystemExit:
                pytest.fail(f"{argv}: {capsys.readouterr().err}")
            assert args.load_checkpoint and args.tokenizer_model, argv
