"""An exclusive lock on an output (a preprocessing prefix, a checkpoint directory), so that two runs never
write the same files at once (torch-free).

The lock is ``flock`` on a lock file: the kernel drops it when its holder exits, however it exits (SIGKILL
included), so a killed run never blocks the next one. The holder writes its pid and host into the file, for
the message the next run gets, and removes the file when it releases the lock. A file that still names a
holder when the lock is taken was left by a run that ended without releasing it: the new holder takes it
over and says whose it was (``taken_over``).
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
    """Hold lock file ``path`` exclusively from construction until ``release``; refuse if another holds it.

    ``flag``: the option that chose the output, named in the refusal (``--output-prefix``, ``--save``).
    """

    def __init__(self, path: str, flag: str) -> None:
        self.path = path
        self._fd, holder = _acquire(path, flag)
        self.taken_over: str | None = None
        """A one-line note when the lock file was left by a run that has ended (else None)."""
        if holder:
            self.taken_over = f"{path}: took over the lock of pid {holder}, which has ended"

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


def locked_message(path: str, holder: str, flag: str) -> str:
    """The refusal naming lock file ``path``, its live ``holder`` (``PID on HOST``) and the output's flag."""
    return (
        f"{path}: another run (pid {holder}) is writing this output; wait for it to finish or choose "
        f"another {flag}"
    )


def lock_holder(path: str) -> str | None:
    """``PID on HOST`` of a live process holding lock file ``path``, or None (no file, a free lock, or no
    file locks here). Probed without waiting and released at once; creates nothing."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # closing the descriptor releases it
    except BlockingIOError:
        return _holder(fd) or "unknown"
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


def _holder(fd: int) -> str:
    """The ``PID on HOST`` text a holder wrote into the lock file ('' when empty)."""
    return os.pread(fd, 200, 0).decode(errors="replace").strip()


def _acquire(path: str, flag: str) -> tuple[int | None, str]:
    """(the descriptor of ``path`` locked by this process, or None where the filesystem has no locks;
    the holder a previous, ended run left in the file, or '')."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd) or "unknown"
            os.close(fd)
            raise OutputLockedError(locked_message(path, holder, flag)) from None
        except OSError as error:
            os.close(fd)
            if error.errno not in UNSUPPORTED_ERRNOS:
                raise
            os.unlink(path)
            print(f"warning: {path}: the filesystem has no file locks; a concurrent run to the same "
                  "output would not be detected", file=sys.stderr)  # fmt: skip
            return None, ""
        if _is_current(fd, path):
            stale = _holder(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} on {socket.gethostname()}\n".encode())
            return fd, stale
        os.close(fd)  # the previous holder removed the file between our open and our lock: try again


def _is_current(fd: int, path: str) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)
