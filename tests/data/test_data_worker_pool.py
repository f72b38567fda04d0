"""OrderedPool: results in task order, errors carried to the caller, a dead worker reported at once."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from anchor_data_helpers import wait_for

from megatron_anchor.data.worker_pool import OrderedPool, WorkerDied


def no_setup() -> None:
    pass


def slow_square(n: int) -> tuple[int, int]:
    """``n * n`` after a delay that makes later tasks finish first; with the worker's pid."""
    if n < 0:
        time.sleep(600)  # the test kills another worker while this one is busy
    time.sleep(0.002 * (20 - n % 20))
    return n * n, os.getpid()


def fails_on_seven(n: int) -> int:
    if n == 7:
        raise ValueError("seven is not allowed")
    return n


def test_results_come_in_task_order_from_every_worker():
    with OrderedPool(3, slow_square, no_setup, ()) as pool:
        results = list(pool.map(range(60)))
    assert [(item, square) for item, (square, _) in results] == [(n, n * n) for n in range(60)]
    assert len({pid for _, (_, pid) in results}) == 3


def test_errors_of_tasks_and_of_the_input_reach_the_caller():
    with pytest.raises(RuntimeError, match="ValueError: seven is not allowed"):
        with OrderedPool(2, fails_on_seven, no_setup, ()) as pool:
            list(pool.map(range(20)))

    def broken_input():
        yield from range(5)
        raise OSError("input.jsonl.gz: corrupt or truncated gzip file")

    with pytest.raises(OSError, match="corrupt or truncated"):
        with OrderedPool(2, fails_on_seven, no_setup, ()) as pool:
            list(pool.map(broken_input()))


def test_a_worker_killed_while_another_is_busy_ends_the_map_at_once():
    """Worker 1 is busy for minutes; worker 0, idle, is killed: the map raises without waiting for it."""
    answers: list = []
    more_input = threading.Event()

    def tasks():
        yield from (0, -1)  # task 0: worker 0, answered at once; task 1: worker 1, busy for minutes
        more_input.wait()  # the input is slow: worker 0 waits for its next task, idle

    def consume(pool: OrderedPool) -> None:
        try:
            for _, answer in pool.map(tasks()):
                answers.append(answer)
        except WorkerDied as error:
            answers.append(error)

    with OrderedPool(2, slow_square, no_setup, ()) as pool:
        consumer = threading.Thread(target=consume, args=(pool,), daemon=True)
        consumer.start()
        wait_for(lambda: answers, "the first answer")
        idle_worker = answers[0][1]
        os.kill(idle_worker, signal.SIGKILL)
        consumer.join(timeout=60)
        assert not consumer.is_alive(), "the map kept waiting for the busy worker"
    more_input.set()
    assert str(answers[1]) == f"worker process {idle_worker} was killed by SIGKILL"
