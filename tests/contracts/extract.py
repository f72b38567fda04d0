"""Extract the contracts of the GPU kernel routes from the files their projects released, into JSON beside
this script. Nothing is imported from the foreign code: Python sources are parsed with ``ast``, torch's op
schemas with torch's own schema parser, C++ sources read with a few regular expressions.

Sources (fetched beforehand; this script downloads nothing):

- torch: ``torchgen/packaged/ATen/native/native_functions.yaml`` and ``torch/_meta_registrations.py`` from
  a wheel (the macOS arm64 wheels are ~70 MB:
  ``pip download --no-deps --only-binary=:all: --platform macosx_11_0_arm64 --python-version 3.11
  -d /tmp/torchwheels torch==2.7.0``, likewise 2.9.0 and 2.11.0) or from an installed torch's
  site-packages (2.13.0: the registry has no macOS cp311 wheel of it);
- flash-attention: a clone of https://github.com/Dao-AILab/flash-attention (tags v2.4.2 ... v2.8.3 for
  ``flash_attn/flash_attn_interface.py`` and ``csrc/flash_attn``; ``hopper/`` at three commits);
- Transformer Engine: a clone of https://github.com/NVIDIA/TransformerEngine (tags v2.1, v2.2, v2.3, v2.18).

    python tests/contracts/extract.py \\
        --torch /tmp/torchwheels/torch-2.*.whl .venv/lib/python3.11/site-packages \\
        --flash-attention ~/src/flash-attention --transformer-engine ~/src/TransformerEngine
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
FLASH_ATTN_TAGS = ("v2.4.2", "v2.5.9", "v2.6.3", "v2.7.4", "v2.8.3")
# hopper/ (FlashAttention-3) at three points of its history: the 2024 beta with separate varlen functions,
# mid-2025 (one function for both layouts), and HEAD after the torch.compile change (merged 2025-12-04).
FA3_COMMITS = {
    "2024-11-12": "284e2c6e",
    "2025-07-11": "ed209409",
    "head": "0f82fead",
}
TE_TAGS = ("v2.1", "v2.2", "v2.3", "v2.18")
ATEN_OPS = ("_flash_attention_forward", "_flash_attention_backward")


# ----------------------------------------------------------------------------------------------- Python
def _decorator_call(node: ast.FunctionDef) -> dict | None:
    """``torch.library.custom_op``-style decorator: ``(op name, mutates_args)`` of its call, else None."""
    for dec in node.decorator_list:
        if isinstance(dec, ast.Call) and dec.args and isinstance(dec.args[0], ast.Constant):
            name = dec.args[0].value
            if isinstance(name, str) and "::" in name:
                mutates = next(
                    (ast.literal_eval(k.value) for k in dec.keywords if k.arg == "mutates_args"), ()
                )
                return {"op": name, "mutates_args": list(mutates), "decorator": ast.unparse(dec.func)}
    return None


def _parameters(args: ast.arguments) -> list[dict]:
    """Every parameter with its kind, default (source text) and annotation (source text)."""
    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = []
    for arg, default in zip(positional, defaults):
        params.append({"name": arg.arg, "kind": "positional_or_keyword", "default": default})
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        params.append({"name": arg.arg, "kind": "keyword_only", "default": default})
    annotations = {a.arg: a.annotation for a in [*positional, *args.kwonlyargs]}
    for p in params:
        ann, default = annotations[p["name"]], p.pop("default")
        p["annotation"] = None if ann is None else ast.unparse(ann)
        if default is not None:
            p["default"] = ast.unparse(default)
    return params


def _returned(node: ast.FunctionDef) -> list[str]:
    """The names of the tuple the function's last top-level ``return`` gives (``*rest`` kept as such)."""
    returns = [s for s in node.body if isinstance(s, ast.Return) and s.value is not None]
    if not returns:
        return []
    value = returns[-1].value
    elements = value.elts if isinstance(value, ast.Tuple) else [value]
    return [ast.unparse(e) for e in elements]


def python_function(source: str, name: str) -> dict | None:
    """Signature, custom-op wrapping and returned tuple of module-level function ``name`` (its last def)."""
    found = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == name]
    if not found:
        return None
    node = found[-1]
    record = {
        "name": name,
        "line": node.lineno,
        "parameters": _parameters(node.args),
        "returns": _returned(node),
    }
    if node.returns is not None:
        record["return_annotation"] = ast.unparse(node.returns)
    custom_op = _decorator_call(node)
    if custom_op is not None:
        record["custom_op"] = custom_op
    return record


def _version_assignment(source: str) -> str | None:
    match = re.search(r"^__version__\s*=\s*[\"']([^\"']+)[\"']", source, re.M)
    return match.group(1) if match else None


# ------------------------------------------------------------------------------------------------- torch
def _torch_files(path: Path) -> tuple[dict[str, str], str]:
    """The three files read from a torch wheel or site-packages, and how the source is named."""
    names = {
        "yaml": "torchgen/packaged/ATen/native/native_functions.yaml",
        "meta": "torch/_meta_registrations.py",
        "version": "torch/version.py",
    }
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as wheel:
            return {k: wheel.read(v).decode() for k, v in names.items()}, path.name
    return {k: (path / v).read_text() for k, v in names.items()}, f"installed torch ({path.name})"


def _schema_record(yaml_text: str, op: str) -> dict:
    """The ``.default`` overload's schema line of ``op``, parsed by torch's own schema parser."""
    import torch  # torch's parser reads any version's schema text; nothing of that version is imported

    match = re.search(rf"^- func: ({op}\(.*)$", yaml_text, re.M)
    schema = torch._C.parse_schema(f"aten::{match.group(1)}")
    params = [
        {
            "name": a.name,
            "type": str(a.type),
            "kind": "keyword_only" if a.kwarg_only else "positional_or_keyword",
            **({"default": repr(a.default_value)} if a.has_default_value() else {}),
        }
        for a in schema.arguments
    ]
    return {"schema": match.group(1), "parameters": params, "returns": [r.name for r in schema.returns]}


def _meta_lse_shapes(meta_source: str) -> dict:
    """The log-sum-exp shapes ``meta__flash_attention_forward`` allocates for dense and varlen inputs."""
    tree = ast.parse(meta_source)
    fn = next(
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "meta__flash_attention_forward"
    )
    for node in ast.walk(fn):
        if isinstance(node, ast.If) and ast.unparse(node.test) == "cum_seq_q is None":
            shapes = {}
            for branch, body in (("dense", node.body), ("varlen", node.orelse)):
                for stmt in body:
                    if isinstance(stmt, ast.Assign) and ast.unparse(stmt.targets[0]) == "logsumexp":
                        call = stmt.value
                        dtype = next((ast.unparse(k.value) for k in call.keywords if k.arg == "dtype"), None)
                        shapes[branch] = {"shape": ast.unparse(call.args[0]), "dtype": dtype}
            return {"function": "meta__flash_attention_forward", "line": fn.lineno, **shapes}
    raise ValueError("meta__flash_attention_forward has no 'if cum_seq_q is None' branch")


def torch_contract(path: Path) -> tuple[str, dict]:
    """One torch version's aten flash ops and meta log-sum-exp shapes."""
    files, source = _torch_files(path)
    version = _version_assignment(files["version"])
    return version.split("+")[0], {
        "version": version,
        "source": {"from": source, "files": ["torchgen/packaged/ATen/native/native_functions.yaml",
                                             "torch/_meta_registrations.py"]},
        "forward": _schema_record(files["yaml"], ATEN_OPS[0]),
        "backward": _schema_record(files["yaml"], ATEN_OPS[1]),
        "meta_lse": _meta_lse_shapes(files["meta"]),
    }  # fmt: skip


# ----------------------------------------------------------------------------------------- git sources
def git_show(repo: Path, rev: str, path: str) -> str | None:
    """A file at a revision of a git repository (None when it does not exist there)."""
    proc = subprocess.run(["git", "-C", str(repo), "show", f"{rev}:{path}"], capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else None


def _function_body(cpp: str, name: str) -> str:
    """The text of C++ function ``name`` from its definition to the next top-level closing brace."""
    match = re.search(rf"^{name}\(", cpp, re.M)
    end = cpp.find("\n}\n", match.start())
    return cpp[match.start() : end]


_EMPTY_ROW = re.compile(
    r"(?:lse\(mi\)|row_sum\(mi\)) = \(sum == 0\.f \|\| sum != sum\) \? "
    r"(\(Split \? -INFINITY : INFINITY\)|-?INFINITY)"
)


def _empty_row_lse(repo: Path, rev: str, paths: tuple[str, ...]) -> dict:
    """The log-sum-exp the forward kernel writes for a query row that sees no key (non-split path)."""
    for path in paths:
        text = git_show(repo, rev, path)
        match = _EMPTY_ROW.search(text or "")
        if match:
            expression = match.group(1)
            value = "-inf" if expression == "-INFINITY" else "+inf"  # '(Split ? -INFINITY : INFINITY)': +inf
            return {"value": value, "file": path, "expression": expression}
    raise ValueError(f"no empty-row log-sum-exp found in {paths} at {rev}")


def _lse_layout(shape_text: str) -> str:
    dims = [d.strip() for d in shape_text.split(",")]
    return "packed" if dims == ["num_heads", "total_q"] else "padded"


def flash_attn_contract(repo: Path, tag: str) -> dict:
    """flash-attn's private varlen forward/backward, and the varlen lse its C++ allocates."""
    interface = git_show(repo, tag, "flash_attn/flash_attn_interface.py")
    cpp = git_show(repo, tag, "csrc/flash_attn/flash_api.cpp")
    body = _function_body(cpp, "mha_varlen_fwd")
    shape = re.search(r"softmax_lse = torch::empty\(\{([^}]*)\}", body).group(1)
    head_dim = re.findall(r"TORCH_CHECK\((head_size[^,]*),", body)
    return {
        "version": _version_assignment(git_show(repo, tag, "flash_attn/__init__.py")),
        "source": {"repository": "Dao-AILab/flash-attention", "tag": tag, "commit": _commit(repo, tag),
                   "files": ["flash_attn/flash_attn_interface.py", "csrc/flash_attn/flash_api.cpp"]},
        "module": "flash_attn.flash_attn_interface",
        "forward": python_function(interface, "_flash_attn_varlen_forward"),
        "backward": python_function(interface, "_flash_attn_varlen_backward"),
        "varlen_lse": {"shape": f"[{shape}]", "layout": _lse_layout(shape),
                       "file": "csrc/flash_attn/flash_api.cpp", "function": "mha_varlen_fwd"},
        "head_dim_checks": head_dim,
        "empty_row_lse": _empty_row_lse(
            repo, tag, ("csrc/flash_attn/src/softmax.h", "csrc/flash_attn/src/flash_fwd_kernel.h")
        ),
    }  # fmt: skip


def _commit(repo: Path, rev: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", f"{rev}^{{commit}}"], capture_output=True, text=True
    )
    return out.stdout.strip()


def _fa3_varlen(interface: str, kind: str) -> dict:
    """The FA3 function taking ``cu_seqlens_q``: ``_flash_attn_{kind}`` (2025+) or its ``_varlen_`` twin."""
    for name in (f"_flash_attn_{kind}", f"_flash_attn_varlen_{kind}"):
        record = python_function(interface, name)
        if record and any(p["name"] == "cu_seqlens_q" for p in record["parameters"]):
            return record
    raise ValueError(f"no FA3 varlen {kind}")


def fa3_contract(repo: Path, commit: str) -> dict:
    """FlashAttention-3's varlen forward/backward at one commit of ``hopper/``."""
    interface = git_show(repo, commit, "hopper/flash_attn_interface.py")
    cpp_name = next(
        p for p in ("hopper/flash_api_stable.cpp", "hopper/flash_api.cpp") if git_show(repo, commit, p)
    )
    cpp = git_show(repo, commit, cpp_name)
    packed = re.search(r"softmax_lse = [^;]*\{num_heads, total_q\}", cpp) is not None
    setup = git_show(repo, commit, "hopper/setup.py")
    return {
        "version": _version_assignment(git_show(repo, commit, "hopper/__init__.py")),
        "package": re.search(r'^PACKAGE_NAME = "([^"]+)"', setup, re.M).group(1),
        "source": {"repository": "Dao-AILab/flash-attention", "commit": _commit(repo, commit),
                   "date": _date(repo, commit), "files": ["hopper/flash_attn_interface.py", cpp_name]},
        "module": "flash_attn_interface",
        "forward": _fa3_varlen(interface, "forward"),
        "backward": _fa3_varlen(interface, "backward"),
        "varlen_lse": {"shape": "[num_heads, total_q]" if packed else "unknown",
                       "layout": "packed" if packed else "unknown", "file": cpp_name},
        "empty_row_lse": _empty_row_lse(repo, commit, ("hopper/softmax.h",)),
    }  # fmt: skip


def _date(repo: Path, rev: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(repo), "show", "-s", "--format=%cs", rev], capture_output=True, text=True
    )
    return out.stdout.strip()


def _te_exports(repo: Path, tag: str) -> dict[str, str]:
    """Module -> file of the TE modules that define ``apply_rotary_pos_emb`` or import it at top level."""
    grep = ["git", "-C", str(repo), "grep", "-l", "apply_rotary_pos_emb", tag, "--", "transformer_engine"]
    listing = subprocess.run(grep, capture_output=True, text=True).stdout.split()
    modules = {}
    for entry in listing:
        path = entry.split(":", 1)[1]
        if not path.endswith(".py"):
            continue
        tree = ast.parse(git_show(repo, tag, path))
        names = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        names |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        if "apply_rotary_pos_emb" in names:
            module = path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
            modules[module] = path
    return modules


def te_contract(repo: Path, tag: str) -> dict:
    """Transformer Engine's ``apply_rotary_pos_emb``: where it is defined and importable, its signature."""
    exports = _te_exports(repo, tag)
    defining = next(
        m for m, p in exports.items() if python_function(git_show(repo, tag, p), "apply_rotary_pos_emb")
    )
    return {
        "version": git_show(repo, tag, "build_tools/VERSION.txt").strip(),
        "source": {"repository": "NVIDIA/TransformerEngine", "tag": tag, "commit": _commit(repo, tag),
                   "files": sorted(exports.values())},
        "module": defining,
        "importable_from": sorted(exports),
        "function": python_function(git_show(repo, tag, exports[defining]), "apply_rotary_pos_emb"),
    }  # fmt: skip


def write(name: str, data: dict) -> None:
    """``HERE/name`` as indented JSON."""
    (HERE / name).write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {HERE / name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch", type=Path, nargs="+", required=True, help="torch wheels or site-packages")
    parser.add_argument("--flash-attention", type=Path, required=True, help="a flash-attention git clone")
    parser.add_argument(
        "--transformer-engine", type=Path, required=True, help="a TransformerEngine git clone"
    )
    args = parser.parse_args()
    versions = sorted(
        (torch_contract(p) for p in args.torch), key=lambda kv: [int(x) for x in kv[0].split(".")]
    )
    write("aten_flash.json", dict(versions))
    write(
        "flash_attn.json",
        {tag.lstrip("v"): flash_attn_contract(args.flash_attention, tag) for tag in FLASH_ATTN_TAGS},
    )
    write(
        "flash_attn3.json", {point: fa3_contract(args.flash_attention, c) for point, c in FA3_COMMITS.items()}
    )
    write("te_rope.json", {tag.lstrip("v"): te_contract(args.transformer_engine, tag) for tag in TE_TAGS})


if __name__ == "__main__":
    main()
