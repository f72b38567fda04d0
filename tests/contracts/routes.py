"""Every GPU route x version the contracts record, through this project's binder, against fp64; and the
README table of the outcomes, generated here so that it cannot drift from the data:

    python tests/contracts/routes.py README.md      # rewrite the table between its markers

A route "runs" when the project binds it and its forward (causal and full calls, GQA, rows that see no key)
and backward from given out/lse match dense fp64 attention; otherwise the outcome says why.
"""

from __future__ import annotations

import functools
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))  # the repository, for tests.varlen_fp64
import standins  # noqa: E402  (beside this file)

from megatron_anchor.attention.flash import aten_flash  # noqa: E402
from megatron_anchor.attention.flash_packages import load_package  # noqa: E402
from megatron_anchor.rope import apply as rope_apply  # noqa: E402
from tests.varlen_fp64 import call_of, reference  # noqa: E402

TOLERANCE = 1e-6
# (queries, keys) per sequence: keys beyond queries, and fewer keys than queries (causal, bottom-right
# aligned: the first rows of such a sequence see no key, which FlashAttention-2 marks with lse = +inf).
LENGTHS = [(5, 9), (7, 3), (1, 1), (12, 12)]
TABLE_START, TABLE_END = "<!-- kernel-routes-table:start -->", "<!-- kernel-routes-table:end -->"


@dataclass(frozen=True)
class Route:
    """One recorded version of one route."""

    family: str  # contracts file: aten_flash, flash_attn, flash_attn3, te_rope
    point: str  # its key there (a version, or a date for FlashAttention-3's hopper/ history)

    @property
    def contract(self) -> dict:
        """The recorded contract."""
        return standins.contracts(self.family)[self.point]

    @property
    def backend(self) -> str:
        """The project's name for the route."""
        return {"aten_flash": "flash", "flash_attn": "flash_attn2", "flash_attn3": "flash_attn3",
                "te_rope": "TE RoPE"}[self.family]  # fmt: skip


ROUTES = [Route(family, point) for family in ("aten_flash", "flash_attn", "flash_attn3", "te_rope")
          for point in standins.contracts(family)]  # fmt: skip
KERNEL_ROUTES = [r for r in ROUTES if r.family != "te_rope"]


def load(route: Route):
    """``(backend, '')`` as the project loads the route's stand-in, or ``(None, reason)``."""
    if route.family == "aten_flash":
        return aten_flash(standins.aten_ops(route.point))
    with standins.installed(standins.package_modules(route.family, route.point)):
        return load_package(route.backend)


def kernel_error(backend, causal: bool, seed: int = 0) -> float:
    """Worst relative error of out, lse, dq, dk, dv of one call (GQA) against autograd over fp64 attention;
    inf when a log-sum-exp is NaN or +inf (the ring's merge would turn it into NaN)."""
    gen = torch.Generator().manual_seed(seed)
    n_q, n_k = sum(a for a, _ in LENGTHS), sum(b for _, b in LENGTHS)
    q = torch.randn(n_q, 4, 16, generator=gen)
    k, v = (torch.randn(n_k, 2, 16, generator=gen) for _ in range(2))
    call = call_of(LENGTHS, causal)
    out, lse, aux = backend.forward(q, k, v, call, 0.3)
    if torch.isnan(lse).any() or (lse == math.inf).any():
        return math.inf
    ref_in = [t.double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_lse = reference(*ref_in, LENGTHS, causal, 0.3)
    dout = torch.randn(q.shape, generator=gen)
    ref_out.backward(dout.double())
    grads = backend.backward(dout, q, k, v, out, lse, call, 0.3, aux)
    seen = ref_lse.isfinite()
    errors = [_rel(out, ref_out), _rel(lse[seen], ref_lse[seen]), float(~(lse[~seen] == -math.inf).all())]
    return max(errors + [_rel(g, x.grad) for g, x in zip(grads, ref_in)])


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.double() - ref.detach()).abs().max() / ref.detach().abs().max().clamp_min(1e-30))


def te_error(tag: str, interleaved: bool) -> float | None:
    """Error of the project's TE call (stand-in of ``tag``) against its fp64 torch rotation; None when the
    project sends this layout to the torch path instead (TE without ``interleaved``)."""
    rope_apply._te_apply.cache_clear()
    try:
        with standins.installed(standins.te_modules(tag)):
            fn, reason = rope_apply._te_apply()
            assert fn is not None, reason
            if interleaved and not rope_apply.te_takes_interleaved():
                return None
            t = torch.randn(6, 1, 2, 12, generator=torch.Generator().manual_seed(1))
            angles = torch.rand(6, 4, generator=torch.Generator().manual_seed(2)) * 6.2  # d_rot 8 of 12
            got = rope_apply._te_rotate(t.double(), angles, 1.0, interleaved)
            want = rope_apply.rotate_fp32(t.double(), angles, 1.0, interleaved)
            return _rel(got, want)
    finally:
        rope_apply._te_apply.cache_clear()


@functools.cache
def outcome(route: Route) -> str:
    """``runs`` or ``refused: why`` (or ``WRONG: ...`` when it binds but does not match fp64)."""
    if route.family == "te_rope":
        errors = {
            layout: te_error(route.point, layout == "interleaved") for layout in ("halves", "interleaved")
        }
        wrong = {k: e for k, e in errors.items() if e is not None and e > TOLERANCE}
        if wrong:
            return f"WRONG: relative error {wrong}"
        return "runs" if errors["interleaved"] is not None else "runs (interleaved RoPE: the torch path)"
    backend, reason = load(route)
    if backend is None:
        return f"refused: {reason}"
    error = max(kernel_error(backend, causal) for causal in (True, False))
    return "runs" if error <= TOLERANCE else f"WRONG: relative error {error:.1e}"


def binding_notes(route: Route) -> str:
    """What this version needs of the binder, read from its contract."""
    c = route.contract
    if route.family == "te_rope":
        names = [p["name"] for p in c["function"]["parameters"]]
        return f"`{c['module']}`; " + ("`interleaved`" if "interleaved" in names else "no `interleaved`")
    if route.family == "aten_flash":
        neutral = [p["name"] for p in c["forward"]["parameters"] if p["kind"] == "keyword_only"][1:]
        return f"`is_causal`, `scale`; lse {c['meta_lse']['varlen']['shape']}; off: {', '.join(neutral)}"
    fwd, bwd = c["forward"], c["backward"]
    notes = [f"`{fwd['name']}`" + (" (custom op)" if "custom_op" in fwd else "")]
    names = {p["name"] for p in fwd["parameters"]} | {p["name"] for p in bwd["parameters"]}
    notes.append("backward `is_causal`" if "is_causal" in names else "`causal`")
    notes.append("`window_size_left/right`" if "window_size_left" in names else "`window_size`")
    layout = c["varlen_lse"]
    notes.append(f"lse {layout['shape']}" + (" converted" if layout["layout"] == "padded" else ""))
    notes.append(f"no-key rows lse {c['empty_row_lse']['value']}")
    return "; ".join(notes)


def _version_cell(route: Route) -> str:
    c = route.contract
    source = c["source"]
    if route.family == "aten_flash":
        return f"torch {c['version']} ({'wheel' if source['from'].endswith('.whl') else 'installed build'})"
    if route.family == "flash_attn3":
        return f"{c['package']} {c['version']} ({source['date']}, {source['commit'][:8]})"
    name = "flash-attn" if route.family == "flash_attn" else "Transformer Engine"
    return f"{name} {c['version']} (tag {source['tag']})"


def routes_table() -> str:
    """The markdown table of every route x version and its outcome."""
    lines = ["| route | version (source) | its stand-in through the binder | bound as |", "|---|---|---|---|"]
    for route in ROUTES:
        lines.append(
            f"| `{route.backend}` | {_version_cell(route)} | {outcome(route)} | {binding_notes(route)} |"
        )
    return "\n".join(lines)


def with_routes_table(readme: str) -> str:
    """``readme`` with the text between the table markers replaced by the current table."""
    start, end = readme.index(TABLE_START) + len(TABLE_START), readme.index(TABLE_END)
    return readme[:start] + "\n" + routes_table() + "\n" + readme[end:]


if __name__ == "__main__":
    path = Path(sys.argv[1])
    path.write_text(with_routes_table(path.read_text()))
    print(f"updated the kernel routes table in {path}")
