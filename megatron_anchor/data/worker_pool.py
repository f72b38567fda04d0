"""An ordered process pool in which a worker that dies is an error at once, never a hang.

``multiprocessing.Pool`` replaces a killed worker and waits forever for the task it held.
``ProcessPoolExecutor`` notices the death, but its result thread reads one pipe that every worker writes: a
worker killed half-way through sending a large result leaves that thread waiting for the rest, forever.
Here every worker has its own task pipe and its own result pipe, written by nobody else, so a dead worker
is an end-of-file on its result pipe, which a drainer thread sees at once.

Task ``k`` goes to worker ``k % workers``; results are read back in task order. A feeder thread sends tasks
ahead (``in_flight`` per worker) and the drainer receives results as they come, so that neither a large task
nor a large result waits for the main thread.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import signal
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import wait

_END = object()


class WorkerDied(RuntimeError):
    """A worker process ended while it had work; the message names its pid and signal or exit code."""


class OrderedPool:
    """``workers`` processes, each set up once by ``initializer(*initargs)``, mapping ``fn`` in order."""

    def __init__(
        self, workers: int, fn: Callable, initializer: Callable, initargs: tuple, in_flight: int = 2
    ):
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        context = multiprocessing.get_context(method)
        self._slots = threading.Semaphore(in_flight * workers)  # tasks sent and not yet read back
        self._stopping = False
        self._finished = False  # every task answered and every worker told to stop
        self._processes, self._tasks, self._results = [], [], []
        for _ in range(workers):
            task_reader, task_writer = context.Pipe(duplex=False)
            result_reader, result_writer = context.Pipe(duplex=False)
            process = context.Process(
                target=_work, args=(task_reader, result_writer, fn, initializer, initargs), daemon=True
            )
            process.start()
            task_reader.close()  # the worker holds the only copies of its ends: its death closes them
            result_writer.close()
            self._processes.append(process)
            self._tasks.append(task_writer)
            self._results.append(result_reader)
        self._arrived = threading.Condition()
        self._answers: list[deque] = [deque() for _ in range(workers)]
        self._failure: BaseException | None = None  # a dead worker, or the drainer's own failure
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def map(self, items: Iterable) -> Iterator[tuple]:
        """``(item, fn(item))`` in the order of ``items``; raises ``WorkerDied`` as soon as a worker dies."""
        sent: queue.Queue = queue.Queue()
        threading.Thread(target=self._feed, args=(items, sent), daemon=True).start()
        index = 0
        while (item := sent.get()) is not _END:
            if isinstance(item, _Failure):
                raise _died(self._processes[item.worker]) if item.worker is not None else item.error
            yield item, self._answer(index % len(self._processes))
            self._slots.release()
            index += 1
        self._finished = True

    def _feed(self, items: Iterable, sent: queue.Queue) -> None:
        """Send task ``k`` to worker ``k % workers``, then the end marker to every worker."""
        worker = None
        try:
            for index, item in enumerate(items):
                self._slots.acquire()
                if self._stopping:
                    return
                worker = index % len(self._tasks)
                self._tasks[worker].send(item)
                sent.put(item)
            for worker in range(len(self._tasks)):
                self._tasks[worker].send(None)
        except BrokenPipeError:  # the worker is dead: its pipe has no reader left
            sent.put(_Failure(None, worker))
            return
        except BaseException as error:  # reading the input failed: the reader raises it
            sent.put(_Failure(error, None))
            return
        sent.put(_END)

    def _drain(self) -> None:
        """Receive every worker's answers as they come; an end of file means that the worker has ended."""
        readers = {reader: worker for worker, reader in enumerate(self._results)}
        try:
            while readers:
                for reader in wait(list(readers)):
                    worker = readers[reader]
                    try:
                        answer = reader.recv()
                    except (EOFError, OSError):  # end of file at or inside a message: the worker is gone
                        del readers[reader]
                        answer = self._ended(worker)
                    with self._arrived:
                        self._answers[worker].append(answer)
                        self._arrived.notify_all()
        except BaseException as error:  # never leave the main thread waiting for answers that cannot come
            with self._arrived:
                self._failure = self._failure or RuntimeError(f"reading the workers' results failed: {error}")
                self._arrived.notify_all()

    def _ended(self, worker: int) -> tuple[bool, WorkerDied]:
        """The answer that stands for an ended worker; a death (exit code not 0) fails the whole map."""
        process = self._processes[worker]
        process.join(timeout=5)
        death = _died(process)
        if process.exitcode != 0:  # 0: it left after the end marker, having answered everything
            with self._arrived:
                self._failure = self._failure or death
        return False, death  # read only if more was expected of it

    def _answer(self, worker: int):
        """The next result of ``worker``; raises as soon as any worker has died."""
        with self._arrived:
            while not self._answers[worker] and self._failure is None:
                self._arrived.wait()
            if self._failure is not None:
                raise self._failure
            ok, value = self._answers[worker].popleft()
        if ok:
            return value
        raise value if isinstance(value, WorkerDied) else RuntimeError(f"a worker process failed:\n{value}")

    def close(self) -> None:
        """Let the workers leave once every task is answered; otherwise stop the feeder, terminate them."""
        self._stopping = True
        self._slots.release()
        for process in self._processes:
            if not self._finished:
                process.terminate()
            process.join(timeout=None if self._finished else 5)
            if process.is_alive():
                process.kill()
                process.join()
        self._drainer.join()  # it ends with the workers' pipes
        for connection in (*self._tasks, *self._results):
            connection.close()

    def __enter__(self) -> OrderedPool:
        return self

    def __exit__(self, *exception) -> None:
        self.close()


def _died(process) -> WorkerDied:
    """The error for a worker process that has ended."""
    code = process.exitcode
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}" if code is not None else "closed its pipe"
    return WorkerDied(f"worker process {process.pid} {how}")


class _Failure:
    """The feeder's news for the reader: the input failed (``error``) or ``worker``'s pipe broke."""

    def __init__(self, error: BaseException | None, worker: int | None) -> None:
        self.error, self.worker = error, worker


def _work(tasks, results, fn: Callable, initializer: Callable, initargs: tuple) -> None:
    """A worker: set up, then answer tasks with ``(True, result)`` until the end marker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    try:
        initializer(*initargs)
        while (task := tasks.recv()) is not None:
            results.send((True, fn(task)))
    except (EOFError, BrokenPipeError):  # the main process went away
        return
    except BaseException:
        with contextlib.suppress(OSError):
            results.send((False, traceback.format_exc()))
