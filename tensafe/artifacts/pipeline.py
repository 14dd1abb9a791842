"""A helper thread that hashes (and optionally writes) buffers while the caller works.

``hashlib`` releases the GIL on large buffers, so hashing on a second thread
overlaps with encryption or decryption on the first. Standard library only.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Protocol


class Hasher(Protocol):
    """The part of a ``hashlib`` object the pipeline uses."""

    def update(self, data: bytes | memoryview, /) -> None: ...


class HashingPipe:
    """Feed buffers to a hash (and optionally a sink), on a helper thread if asked.

    ``hashlib`` and OpenSSL release the GIL on large buffers, so hashing on a second
    thread overlaps with encryption or decryption on the first. At most ``depth``
    buffers are queued, which bounds memory. Buffers fed must not be modified later.
    """

    def __init__(
        self,
        hasher: Hasher,
        *,
        sink: Callable[[bytes | memoryview], object] | None = None,
        background: bool = True,
        depth: int = 4,
    ) -> None:
        self._hasher = hasher
        self._sink = sink
        self._error: BaseException | None = None
        self._queue: queue.Queue[bytes | memoryview | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(maxsize=depth)
            self._thread = threading.Thread(target=self._run, name="tensafe-hash", daemon=True)
            self._thread.start()

    def _consume(self, data: bytes | memoryview) -> None:
        self._hasher.update(data)
        if self._sink is not None:
            self._sink(data)

    def _run(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._consume(item)
                except BaseException as exc:  # re-raised on the feeding thread
                    self._error = exc

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def feed(self, data: bytes | memoryview) -> None:
        """Hash (and sink) ``data``; re-raises an error from the helper thread."""
        self._raise_pending()
        if self._queue is None:
            self._consume(data)
        else:
            self._queue.put(data)

    def close(self) -> None:
        """Wait until everything fed is processed; re-raises a helper-thread error."""
        if self._queue is not None and self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._queue = None
        self._raise_pending()


__all__ = ["Hasher", "HashingPipe"]
