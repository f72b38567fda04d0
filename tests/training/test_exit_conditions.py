"""Megatron's exit conditions on a one-process gloo group: SIGTERM, duration and interval."""

from __future__ import annotations

import argparse
import os
import signal
import time

import pytest
import torch
import torch.distributed as dist

from megatron_anchor.parallel import free_port
from megatron_anchor.training.exit_conditions import ExitConditions

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _exits(handler: bool = False, minutes: float | None = None, interval: int | None = None, started=None):
    args = argparse.Namespace(
        exit_signal_handler=handler, exit_duration_in_mins=minutes, exit_interval=interval
    )
    return ExitConditions(args, started)


def test_sigterm_is_caught_and_reported_after_the_step(group):
    exits = _exits(handler=True)
    exits.install()
    try:
        assert exits.reason(3, CPU) is None
        os.kill(os.getpid(), signal.SIGTERM)  # would end the test process without the handler
        assert exits.reason(4, CPU) == "SIGTERM received (--exit-signal-handler)"
    finally:
        exits.uninstall()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_without_the_handler_sigterm_is_not_left_ignored(group):
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as inherited from a launcher that ignores it
    exits = _exits()
    exits.install()
    try:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        exits.uninstall()
        signal.signal(signal.SIGTERM, previous)


def test_duration_and_interval(group):
    long_ago = time.perf_counter() - 120  # the job started two minutes ago
    assert _exits(minutes=1.5, started=long_ago).reason(7, CPU) == "--exit-duration-in-mins 1.5 reached"
    assert _exits(minutes=5, started=long_ago).reason(7, CPU) is None
    assert _exits(interval=4).reason(7, CPU) is None
    assert _exits(interval=4).reason(8, CPU) == "--exit-interval 4 reached"
