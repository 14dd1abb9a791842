"""The in-process operation queue: per-run FIFO order, runs served round-robin.

Each run has a FIFO of future ids. A run is either *ready* (waiting for a thread),
*active* (one thread is running one of its operations) or idle — never two at
once, so a run's operations execute one at a time, in the order they were
enqueued. Different runs proceed concurrently on ``threads`` threads; after each
operation a busy run goes to the back of the ready line, so one long pipeline
cannot starve other runs.

Enqueue order must equal ``seq`` order: submitters hold :meth:`RunQueue.run_lock`
while they allocate a ``seq``, commit the operation and enqueue it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from server.queue.base import QueuedOperation

log = logging.getLogger("tensafe.server.worker")

Handler = Callable[[str, QueuedOperation], None]


class RunQueue:
    """Per-run ordered execution of operations on a small thread pool (an
    :class:`~server.queue.OperationQueue`).

    Example::

        queue = RunQueue(handler=lambda run_id, item: print(run_id, item.future_id), threads=2)
        queue.start()
        queue.enqueue("run_1", QueuedOperation("fut_1"))
        queue.stop()

    Args:
        handler: runs one operation; exceptions it lets escape are logged and do
            not stop the thread or affect other runs.
        threads: how many runs may execute at the same time.
    """

    def __init__(self, *, handler: Handler, threads: int, name: str = "tensafe-worker") -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self._handler = handler
        self._threads_wanted = threads
        self._name = name
        self._cv = threading.Condition()
        self._queues: dict[str, deque[QueuedOperation]] = {}
        self._ready: deque[str] = deque()
        self._active: set[str] = set()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def run_lock(self, run_id: str) -> threading.Lock:
        """The lock submitters of ``run_id`` hold across seq allocation, commit and enqueue."""
        with self._locks_guard:
            lock = self._locks.get(run_id)
            if lock is None:
                lock = self._locks[run_id] = threading.Lock()
            return lock

    def enqueue(self, run_id: str, item: QueuedOperation) -> None:
        """Append an operation to its run's FIFO."""
        with self._cv:
            queue = self._queues.setdefault(run_id, deque())
            queue.append(item)
            if run_id not in self._active and run_id not in self._ready:
                self._ready.append(run_id)
                self._cv.notify()

    def queued(self, run_id: str) -> int:
        """Operations of ``run_id`` waiting (not counting a running one)."""
        with self._cv:
            return len(self._queues.get(run_id, ()))

    def start(self) -> None:
        """Start the worker threads (idempotent)."""
        with self._cv:
            if self._threads:
                return
            self._stopping = False
            for i in range(self._threads_wanted):
                thread = threading.Thread(target=self._loop, name=f"{self._name}-{i}", daemon=True)
                self._threads.append(thread)
                thread.start()

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop taking operations; wait up to ``timeout`` s for running ones to finish.

        Operations still queued stay ``pending`` in the database; the next start
        marks them failed (see :func:`server.services.operations.fail_interrupted`).
        """
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(timeout)

    def _next(self) -> tuple[str, QueuedOperation] | None:
        with self._cv:
            while not self._ready and not self._stopping:
                self._cv.wait()
            if self._stopping:
                return None
            run_id = self._ready.popleft()
            self._active.add(run_id)
            return run_id, self._queues[run_id].popleft()

    def _done(self, run_id: str) -> None:
        with self._cv:
            self._active.discard(run_id)
            if self._queues.get(run_id):
                self._ready.append(run_id)
                self._cv.notify()
            else:
                self._queues.pop(run_id, None)

    def _loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            run_id, operation = item
            try:
                self._handler(run_id, operation)
            except Exception:  # the handler records errors itself; this is a last resort
                log.exception("operation handler crashed", extra={"run_id": run_id})
            finally:
                self._done(run_id)


__all__ = ["Handler", "RunQueue"]
