"""``megatron_anchor.parallel`` is index arithmetic below the attention: it never imports the attention
package (nor anything above it), so the two packages import one way only."""

from __future__ import annotations

import ast
from pathlib import Path

import megatron_anchor.parallel

ABOVE = ("megatron_anchor.attention", "megatron_anchor.model", "megatron_anchor.training")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_parallel_never_imports_the_attention():
    folder = Path(megatron_anchor.parallel.__file__).parent
    found = {
        f"{path.name}: {name}"
        for path in sorted(folder.glob("*.py"))
        for name in _imports(path)
        if name.startswith(ABOVE)
    }
    assert found == set()
