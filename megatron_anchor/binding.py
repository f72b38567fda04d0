"""Calling a foreign kernel by parameter name: each of its parameters gets a value this project chose, or the
kernel is refused, naming it and the parameters nobody chose.

A parameter left at the package's default is one nobody chose. Renames happen: FlashAttention-3's backward
took ``causal`` until the torch.compile change (merged 2025-12-04), then ``is_causal: bool = False``; a binder
that skipped unknown parameters with defaults trained on non-causal gradients there. So a binder knows
every spelling it sets (``causal``/``is_causal``, ``window_size`` vs ``window_size_left/right``, ...), a
parameter it does not know refuses the kernel, and a kernel lacking a spelling of a required meaning (the
causal flag, the softmax scale) is refused too.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass


class BindError(TypeError):
    """A foreign function whose parameters this project cannot all set."""


@dataclass(frozen=True)
class Parameter:
    """One parameter of a foreign function or op schema."""

    name: str
    required: bool


def python_parameters(fn: Callable) -> list[Parameter]:
    """``fn``'s parameters; of a ``torch.library.custom_op`` (whose own signature is ``(*args, **kwargs)``)
    those of the function it wraps. ``*args``/``**kwargs`` hide parameters: such a function is refused."""
    target = getattr(fn, "_init_fn", fn)
    params = []
    for p in inspect.signature(target).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise BindError(f"{qualified_name(fn)} takes {p}: its parameters cannot be checked")
        params.append(Parameter(p.name, p.default is p.empty))
    return params


def schema_parameters(schema) -> list[Parameter]:
    """The arguments of a ``torch._C.FunctionSchema`` (an op overload's ``_schema``)."""
    return [Parameter(a.name, not a.has_default_value()) for a in schema.arguments]


def qualified_name(fn: Callable) -> str:
    """``module.name`` of a function (or of the function a custom op wraps)."""
    target = getattr(fn, "_init_fn", fn)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__name__', repr(target))}"


def bind(
    owner: str,
    params: list[Parameter],
    values: Mapping[str, object],
    required_meanings: Mapping[str, tuple[str, ...]],
) -> dict:
    """Keyword arguments giving every one of ``params`` its value from ``values``.

    ``required_meanings`` maps a meaning (e.g. ``"causal flag"``) to its spellings, one of which ``params``
    must have. Raises ``BindError`` naming ``owner`` and every unmet meaning and unbound parameter.
    """
    names = {p.name for p in params}
    problems = [
        f"no {meaning} parameter (none of {', '.join(spellings)})"
        for meaning, spellings in required_meanings.items()
        if not names.intersection(spellings)
    ]
    unbound = [p.name for p in params if p.name not in values]
    if unbound:
        listed = ", ".join(f"'{name}'" for name in unbound)
        problems.append(f"parameter{'s' if len(unbound) > 1 else ''} {listed} not set by this project")
    if problems:
        raise BindError(f"{owner}: {'; '.join(problems)}")
    return {p.name: values[p.name] for p in params}


class Binding:
    """A foreign function's parameters checked once against what this project sets; per call, its kwargs.

    ``fixed``: values the same for every call (the neutral setting of each optional feature); ``per_call``:
    the names whose values each call brings (several spellings of one value may be listed).
    """

    def __init__(
        self,
        owner: str,
        params: list[Parameter],
        fixed: Mapping[str, object],
        per_call: Iterable[str],
        required_meanings: Mapping[str, tuple[str, ...]],
    ) -> None:
        per_call = set(per_call)
        bind(owner, params, {**dict.fromkeys(per_call), **fixed}, required_meanings)  # raises BindError
        self.owner = owner
        self.fixed = {p.name: fixed[p.name] for p in params if p.name in fixed and p.name not in per_call}
        self.per_call = [p.name for p in params if p.name in per_call]

    def kwargs(self, **values: object) -> dict:
        """Every parameter's value: the fixed ones and this call's (``values`` may hold other spellings)."""
        return {**self.fixed, **{name: values[name] for name in self.per_call}}
