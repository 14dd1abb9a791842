"""Helper threads that hash (and write) buffers while the caller works, and a pool of
reusable buffers for them.

``hashlib`` and file writes release the GIL on large buffers, so hashing (and
writing) on helper threads overlaps with encryption or decryption on the caller's
thread: with two hash streams (plaintext and ciphertext) and a write, a sealing
keeps two cores busy. :class:`BufferPool` lets the caller encrypt or decrypt into
a few preallocated buffers (``AESGCM.encrypt_into``/``decrypt_into``) instead of a
fresh allocation per chunk; the helper thread hands each buffer back once it has
hashed and written it. Standard library only.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Protocol


class Hasher(Protocol):
    """The part of a ``hashlib`` object the pipeline uses."""

    def update(self, data: bytes | memoryview, /) -> None: ...


class BufferPool:
    """At most ``count`` reusable ``bytearray`` buffers of ``size`` bytes each.

    Buffers are allocated on first need, so a short stream allocates only what it
    uses. :meth:`acquire` blocks while all ``count`` buffers are out; whoever is
    done with a buffer (typically a helper thread) gives it back with
    :meth:`release`. Memory therefore stays within ``count * size`` bytes. A
    released buffer is handed out again unchanged: the next holder must overwrite
    what it uses. Thread-safe.

    Example:
        >>> pool = BufferPool(size=4, count=1)
        >>> buffer = pool.acquire()
        >>> pool.release(buffer)
        >>> pool.acquire() is buffer
        True
    """

    def __init__(self, *, size: int, count: int) -> None:
        """Raises:
        ValueError: if ``size`` is negative or ``count`` is not positive.
        """
        if size < 0 or count < 1:
            raise ValueError("BufferPool needs size >= 0 and count >= 1")
        self.size = size
        self.count = count
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._allocated = 0
        self._lock = threading.Lock()

    def acquire(self) -> bytearray:
        """A buffer of :attr:`size` bytes, waiting until one is released if all are out."""
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._allocated < self.count:
                self._allocated += 1
                return bytearray(self.size)
        return self._free.get()

    def release(self, buffer: bytearray) -> None:
        """Give back a buffer obtained from :meth:`acquire` (exactly once)."""
        self._free.put(buffer)


_Item = tuple[bytes | bytearray | memoryview | None, Callable[[], object] | None]


class HashingPipe:
    """Feed buffers to a hash (and optionally a sink), on helper threads if asked.

    Buffers are hashed and then passed to ``sink`` in the order fed. With
    ``background`` the hashing runs on a helper thread, and with ``sink_thread``
    the sink runs on a second one, so hashing buffer *n + 1* overlaps writing
    buffer *n*. At most ``depth`` buffers wait per thread, which bounds memory.
    A buffer fed must not be modified until it was consumed: pass ``then`` to
    :meth:`feed` to learn when (it runs on the thread that consumed the buffer,
    after the sink).

    The first error raised by the hash, the sink or a ``then`` callback is kept and
    re-raised on the feeding thread (by the next :meth:`feed`, :meth:`check` or
    :meth:`close`); from then on buffers are no longer hashed or written, but
    ``then`` callbacks still run, so a buffer pool never runs dry. A pipe that
    failed stays failed: a later :meth:`feed` raises ``RuntimeError``.

    Example:
        >>> import hashlib
        >>> digest, written = hashlib.sha256(), []
        >>> with HashingPipe(digest, sink=written.append) as pipe:
        ...     pipe.feed(b"abc")
        >>> digest.hexdigest()[:8], written
        ('ba7816bf', [b'abc'])
    """

    def __init__(
        self,
        hasher: Hasher,
        *,
        sink: Callable[[bytes | memoryview], object] | None = None,
        background: bool = True,
        depth: int = 4,
        sink_thread: bool = False,
    ) -> None:
        self._hasher = hasher
        self._sink = sink
        self._error: BaseException | None = None
        self._reported = False
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Item | None] | None = None
        self._sink_queue: queue.Queue[_Item | None] | None = None
        self._threads: list[threading.Thread] = []
        if background:
            self._queue = queue.Queue(maxsize=depth)
            self._threads.append(
                threading.Thread(target=self._run_hash, name="tensafe-hash", daemon=True)
            )
            if sink is not None and sink_thread:
                self._sink_queue = queue.Queue(maxsize=depth)
                self._threads.append(
                    threading.Thread(target=self._run_sink, name="tensafe-write", daemon=True)
                )
            for thread in self._threads:
                thread.start()

    # --- helper-thread side -------------------------------------------------------

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._error is None:
                self._error = exc

    def _hash(self, data: bytes | bytearray | memoryview) -> None:
        if self._error is None:
            try:
                self._hasher.update(data)  # type: ignore[arg-type]
            except BaseException as exc:  # re-raised on the feeding thread
                self._fail(exc)

    def _write_and_finish(self, item: _Item) -> None:
        data, then = item
        if data is not None and self._sink is not None and self._error is None:
            try:
                self._sink(data)  # type: ignore[arg-type]
            except BaseException as exc:
                self._fail(exc)
        if then is not None:
            try:
                then()
            except BaseException as exc:
                self._fail(exc)

    def _run_hash(self) -> None:
        assert self._queue is not None
        while (item := self._queue.get()) is not None:
            if item[0] is not None:
                self._hash(item[0])
            if self._sink_queue is not None:
                self._sink_queue.put(item)
            else:
                self._write_and_finish(item)
        if self._sink_queue is not None:
            self._sink_queue.put(None)

    def _run_sink(self) -> None:
        assert self._sink_queue is not None
        while (item := self._sink_queue.get()) is not None:
            self._write_and_finish(item)

    # --- feeding-thread side ------------------------------------------------------

    def check(self) -> None:
        """Re-raise an error from the hash, the sink or a callback, if one occurred.

        Raises:
            BaseException: that error, the first time it is reported.
            RuntimeError: if it was already reported once.
        """
        if self._error is None:
            return
        if self._reported:
            raise RuntimeError("HashingPipe failed earlier") from self._error
        self._reported = True
        raise self._error

    def feed(
        self,
        data: bytes | bytearray | memoryview,
        *,
        then: Callable[[], object] | None = None,
    ) -> None:
        """Hash (and sink) ``data``, then call ``then`` (on the consuming thread).

        Waits while ``depth`` buffers are queued. ``then`` runs even if the pipe
        failed meanwhile (the data is then skipped).

        Raises:
            BaseException: an earlier error of the hash, sink or a callback.
            RuntimeError: if the pipe is closed or failed earlier.
        """
        self._feed((data, then))

    def after(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (on the consuming thread) once everything fed so far was
        hashed and sunk; it runs even if the pipe failed meanwhile.

        Raises:
            BaseException: an earlier error of the hash, sink or a callback.
            RuntimeError: if the pipe is closed or failed earlier.
        """
        self._feed((None, callback))

    def _feed(self, item: _Item) -> None:
        self.check()
        if self._queue is None:
            if self._threads:
                raise RuntimeError("feed to a closed HashingPipe")
            if item[0] is not None:
                self._hash(item[0])
            self._write_and_finish(item)
            self.check()
        else:
            self._queue.put(item)

    def close(self) -> None:
        """Wait until everything fed is hashed, sunk and called back; idempotent.

        Raises:
            BaseException: an error of the hash, sink or a callback not yet reported.
        """
        if self._queue is not None:
            self._queue.put(None)
            for thread in self._threads:
                thread.join()
            self._queue = None
        if self._error is not None and not self._reported:
            self.check()

    def __enter__(self) -> HashingPipe:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close; when leaving with an exception, a pipe error does not replace it."""
        if exc_type is None:
            self.close()
            return
        with contextlib.suppress(Exception):  # the caller's exception is the one that matters
            self.close()


__all__ = ["BufferPool", "Hasher", "HashingPipe"]
