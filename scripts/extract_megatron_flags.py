"""Write every command-line flag of Megatron-LM's training parser to
``megatron_anchor/training/megatron_lm_flags.json`` (names, argument group, dest, nargs, default only).

Source: Megatron-LM, tag ``core_v0.16.0``, ``megatron/training/arguments.py``: its
``add_megatron_arguments(parser)`` is run on a checkout of the tag, so that the flags its dataclass-driven
argument groups generate (``TransformerConfig``, ``TrainingConfig``, ``CheckpointConfig``, ...) are
listed exactly as Megatron-LM's own ``--help`` lists them. Defaults are the parser's (Megatron's
``validate_args`` fills a few more, e.g. ``--split``). Flags the file adds only when an optional package
imports (e.g. NVIDIA Kitchen's) are read from the file's ``add_argument`` calls as well, marked
``"conditional": true``.

Usage (a clone of NVIDIA/Megatron-LM with its tags; ``six`` and ``einops``, which Megatron-LM's training
package imports, importable, e.g. ``pip download six einops -d W`` and the wheels unzipped into DIR)::

    python scripts/extract_megatron_flags.py --repo /path/to/Megatron-LM --tag core_v0.16.0 --extra-path DIR

Megatron-LM's training package imports one module of Triton kernels (batch-invariant mode) that the
argument definitions do not use; it is replaced by an empty module, so Triton need not be installed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import tempfile
import types
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "megatron_anchor" / "training" / "megatron_lm_flags.json"
SOURCE_FILE = "megatron/training/arguments.py"
_UNUSED_KERNELS = "megatron.core.transformer.custom_layers.batch_invariant_kernels"


class _EmptyModule(types.ModuleType):
    """A module whose every attribute is None (stands in for a module the parser never calls)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def _checkout(repo: str, tag: str, into: str) -> str:
    """``megatron/`` of ``tag`` extracted under ``into``; returns the tag's commit."""
    archive = subprocess.run(
        ["git", "-C", repo, "archive", tag, "megatron"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    commit = subprocess.run(
        ["git", "-C", repo, "rev-parse", f"{tag}^{{commit}}"], check=True, capture_output=True, text=True
    )
    return commit.stdout.strip()


def _json_default(value: object) -> object:
    """A default as JSON: plain values as they are, anything else (enums, callables) by its repr."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def megatron_flags(source_root: str) -> list[dict]:
    """One entry per argparse action of Megatron-LM's parser (``-h`` excluded), in definition order."""
    sys.path.insert(0, source_root)
    sys.modules[_UNUSED_KERNELS] = _EmptyModule(_UNUSED_KERNELS)
    from megatron.training.arguments import add_megatron_arguments

    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_megatron_arguments(parser)
    entries = []
    for group in parser._action_groups:
        for action in group._group_actions:
            if not action.option_strings or "--help" in action.option_strings:
                continue
            entries.append(
                {
                    "flags": list(action.option_strings),
                    "group": group.title,
                    "dest": action.dest,
                    "nargs": action.nargs,
                    "default": _json_default(action.default),
                }
            )
    return entries


def _literal(node: ast.expr | None, fallback: object = None) -> object:
    try:
        return fallback if node is None else ast.literal_eval(node)
    except ValueError:
        return fallback


def conditional_flags(source_root: str, known: set[str]) -> list[dict]:
    """``add_argument`` calls of the arguments file whose flags the parser run did not define (added only
    when an optional package imports), with the group title of the function that adds them."""
    tree = ast.parse(Path(source_root, SOURCE_FILE).read_text())
    entries = []
    for func in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
        calls = [c for c in ast.walk(func) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)]
        titles = [_literal(k.value) for c in calls if c.func.attr == "add_argument_group" for k in c.keywords
                  if k.arg == "title"]  # fmt: skip
        for call in (c for c in calls if c.func.attr == "add_argument"):
            names = [a.value for a in call.args if isinstance(a, ast.Constant)]
            names = [n for n in names if str(n).startswith("--")]
            if not names or set(names) & known:
                continue
            kw = {k.arg: k.value for k in call.keywords}
            action = _literal(kw.get("action"))
            switch = action in ("store_true", "store_false", "store_const")
            entries.append(
                {
                    "flags": names,
                    "group": titles[0] if titles else func.name,
                    "dest": _literal(kw.get("dest")) or names[0][2:].replace("-", "_"),
                    "nargs": 0 if switch else _literal(kw.get("nargs")),
                    "default": _literal(kw.get("default"), action == "store_false" if switch else None),
                    "conditional": True,
                }
            )
    return entries


def main() -> None:
    """Extract and write the JSON file."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repo", required=True, help="a clone of NVIDIA/Megatron-LM")
    p.add_argument("--tag", default="core_v0.16.0")
    p.add_argument("--extra-path", action="append", default=[], help="directory with six and einops")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    sys.path[:0] = [os.path.abspath(d) for d in args.extra_path]
    with tempfile.TemporaryDirectory() as tmp:
        commit = _checkout(args.repo, args.tag, tmp)
        entries = megatron_flags(tmp)
        entries += conditional_flags(tmp, {f for e in entries for f in e["flags"]})
    header = {
        "source": {
            "repository": "NVIDIA/Megatron-LM",
            "tag": args.tag,
            "commit": commit,
            "file": SOURCE_FILE,
            "function": "add_megatron_arguments",
            "written_by": "scripts/extract_megatron_flags.py",
        }
    }
    lines = [json.dumps(entry) for entry in entries]
    text = json.dumps(header)[:-1] + ', "actions": [\n' + ",\n".join(lines) + "\n]}\n"
    json.loads(text)  # well-formed
    Path(args.out).write_text(text)
    print(f"{len(entries)} flags of {args.tag} ({commit[:10]}) -> {args.out}")


if __name__ == "__main__":
    main()
