"""An exclusive lock on an output path prefix, so that two runs never write the same files at once.

The lock is ``flock`` on ``{prefix}.lock``: the kernel drops it when its holder exits, however it exits
(SIGKILL included), so a killed run never leaves a stale lock behind. The holder writes its pid and host into
the file, for the message the next run gets, and removes the file when it releases the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys

# flock is missing on some parallel filesystems (Lustre mounted without ``-o flock``).
UNSUPPORTED_ERRNOS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)


class OutputLockedError(OSError):
    """Another live process holds the lock; the message names the lock file and the holder."""


class OutputLock:
    """Hold ``{prefix}.lock`` exclusively from construction until ``release``; refuse if another holds it."""

    def __init__(self, prefix: str) -> None:
        self.path = prefix + ".lock"
        self._fd: int | None = _acquire(self.path)

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still holding it: a waiting run then re-checks the path (_acquire)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None


def _acquire(path: str) -> int | None:
    """The descriptor of ``path`` locked by this process; None where the filesystem has no locks."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputLockedError(
                f"{path}: another run (pid {holder}) is writing this output; wait for it to finish or "
                "choose another --output-prefix"
            ) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in UNSUPPORTED_ERRNOS:
                raise
            os.unlink(path)
            print(f"warning: {path}: the filesystem has no file locks; a concurrent run to the same "
                  "output would not be detected", file=sys.stderr)  # fmt: skip
            return None
        if _is_current(fd, path):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: try again


def _is_current(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)
