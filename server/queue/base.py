"""What services need from an operation queue: :class:`OperationQueue`.

Services commit an operation (its ``seq``) and hand it to the queue; the worker
consumes the queue. Services depend on this Protocol, never on the worker, so
``server.services`` and ``server.worker`` do not import each other's way
(:class:`~server.queue.local.RunQueue` is the in-process implementation).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class QueuedOperation:
    """A queued operation: its future id and the request it carries in memory
    (batches are never written to the database; see :mod:`server.services.operations`)."""

    future_id: str
    request: dict[str, Any] | None = field(default=None, repr=False)


@runtime_checkable
class OperationQueue(Protocol):
    """A per-run ordered queue of committed operations.

    Enqueue order must equal ``seq`` order: a submitter holds :meth:`run_lock` while
    it allocates a ``seq``, commits the operation and calls :meth:`enqueue`.
    Cancelling needs no queue call: a cancelled operation is marked in the database
    and the worker skips it when it fails to claim it.

    Example::

        with queue.run_lock("run_1"):
            ...  # allocate seq, commit
            queue.enqueue("run_1", QueuedOperation("fut_1"))
    """

    def run_lock(self, run_id: str) -> AbstractContextManager[object]:
        """The lock submitters of ``run_id`` hold across seq allocation, commit and enqueue."""
        ...

    def enqueue(self, run_id: str, item: QueuedOperation) -> None:
        """Append an operation to its run's FIFO (after its commit)."""
        ...


__all__ = ["OperationQueue", "QueuedOperation"]
