"""One report of everything wrong with a run's configuration, gathered before anything starts.

Each check runs on its own: a failed one is recorded and the next one runs; a check that needs one that
failed (or a flag whose value could not be parsed) is skipped rather than reporting the same problem again.
Torch-free.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """Several configuration errors at once (one line each); ``str()`` joins them."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = list(errors)


def require(ok: bool, message: str) -> None:
    """ValueError with ``message`` unless ``ok`` (one check's failure, for ``Report.run`` to gather)."""
    if not ok:
        raise ValueError(message)


def raise_all(errors: list[str]) -> None:
    """Raise ConfigError for ``errors`` (nothing when there are none)."""
    if errors:
        raise ConfigError(errors)


@dataclass
class Report:
    """Errors (the run cannot work), warnings (it may not), facts (what was found), notes (what was
    decided for the user), and the names of the checks that failed or were skipped."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: set[str] = field(default_factory=set)
    command_line_errors: int = 0
    """How many of ``errors`` are the command line's (flags and their values): exit 2, else 1."""

    def run(
        self,
        name: str,
        check: Callable[[], object],
        *,
        after: tuple[str, ...] = (),
        needs: tuple[str, ...] = (),
        args: argparse.Namespace | None = None,
    ) -> bool:
        """Run ``check`` unless a check of ``after`` failed or a flag dest of ``needs`` did not parse.
        A ValueError it raises (a ConfigError: each of its lines) or an error it appends fails it."""
        unparsed = getattr(args, "unparsed", set()) if args is not None else set()
        if any(n in self.failed for n in after) or "*" in unparsed or any(n in unparsed for n in needs):
            self.failed.add(name)
            return False
        before = len(self.errors)
        try:
            check()
        except ValueError as err:
            self.errors += err.errors if isinstance(err, ConfigError) else [str(err)]
        if len(self.errors) > before:
            self.failed.add(name)
            return False
        return True

    def verdict(self) -> str:
        """``OK`` or ``N error(s)``."""
        n = len(self.errors)
        return "OK" if n == 0 else f"{n} error{'s' if n > 1 else ''}"

    def exit_code(self) -> int:
        """0 when OK; 2 when the command line has errors; 1 when only the machine's checks failed."""
        return 0 if not self.errors else (2 if self.command_line_errors else 1)
