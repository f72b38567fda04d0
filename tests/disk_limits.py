"""A full disk for a subprocess, without root: a file-size limit (RLIMIT_FSIZE) set in its preexec_fn."""

from __future__ import annotations

import resource
import signal
from collections.abc import Callable


def file_size_limit(nbytes: int) -> Callable[[], None]:
    """A ``preexec_fn`` under which a write past ``nbytes`` fails with EFBIG, as one on a full disk does."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel ends the process at that write
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit
