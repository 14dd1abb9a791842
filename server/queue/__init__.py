"""The ordered per-run operation queue, between services (submit) and worker (execute).

* :class:`OperationQueue` — the Protocol services depend on (``run_lock``, ``enqueue``).
* :class:`RunQueue` — the in-process implementation: per-run FIFO on a thread pool,
  whose handler is the worker's executor.
* :class:`FutureNotifier` — wakes long polls when the worker finished a future.
"""

from server.queue.base import OperationQueue, QueuedOperation
from server.queue.local import Handler, RunQueue
from server.queue.notify import FutureNotifier, Waiter

__all__ = ["FutureNotifier", "Handler", "OperationQueue", "QueuedOperation", "RunQueue", "Waiter"]
