"""Megatron's exit conditions: ``--exit-signal-handler`` (SIGTERM), ``--exit-duration-in-mins`` and
``--exit-interval``. The loop asks after every step; the ranks agree (one tiny all-reduce) so that all of
them save the same step and exit 0 together.

Under torchrun, a SIGTERM that reaches torchrun itself is forwarded to the workers, which then have
torchrun's ``--shutdown-timeout`` (30 s by default) to finish the step and save, and torchrun exits non-zero
of its own accord. Schedulers such as Slurm signal every process of the job: launch torchrun with
``--signals-to-handle SIGINT,SIGHUP,SIGQUIT`` and SIGTERM ignored (``trap '' TERM``) to leave SIGTERM to
the workers, so that torchrun waits for their save and exits 0.
"""

from __future__ import annotations

import argparse
import signal
import time

import torch
import torch.distributed as dist


class ExitConditions:
    """The exit flags of a run; ``install`` takes over SIGTERM, ``reason(step)`` says whether to stop."""

    def __init__(self, args: argparse.Namespace, started: float | None = None) -> None:
        self.on_signal = args.exit_signal_handler
        self.minutes = args.exit_duration_in_mins
        self.interval = args.exit_interval
        # ``time.perf_counter()`` when the job started (pretrain's first line), so that imports, checks and
        # the rendezvous count against --exit-duration-in-mins as they count against a scheduler's limit.
        self.started = time.perf_counter() if started is None else started
        self._received: int | None = None
        self._previous = None

    def install(self) -> None:
        """Catch SIGTERM with --exit-signal-handler; otherwise make sure it terminates (a launcher that
        ignores it would otherwise pass the ignore on)."""
        handler = self._catch if self.on_signal else signal.SIG_DFL
        self._previous = signal.signal(signal.SIGTERM, handler)

    def uninstall(self) -> None:
        """Restore the SIGTERM disposition found by ``install``."""
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _catch(self, signum: int, frame) -> None:
        self._received = signum

    def reason(self, step: int, device: torch.device) -> str | None:
        """Why the run stops after ``step`` (the same answer on every rank), or None (collective when
        --exit-signal-handler or --exit-duration-in-mins is given)."""
        if self.on_signal or self.minutes is not None:
            elapsed = (time.perf_counter() - self.started) / 60
            local = [self._received is not None, self.minutes is not None and elapsed > self.minutes]
            flags = torch.tensor(local, dtype=torch.int32, device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # any rank signalled or out of time
            signalled, out_of_time = flags.tolist()  # one read of the device
            if signalled:
                return "SIGTERM received (--exit-signal-handler)"
            if out_of_time:
                return f"--exit-duration-in-mins {self.minutes:g} reached"
        if self.interval and step % self.interval == 0:
            return f"--exit-interval {self.interval} reached"
        return None
