"""Wake long-polling requests when a future finishes (no database polling).

A request registers a waiter *before* it reads the future's state, then awaits
the waiter; the worker calls :meth:`FutureNotifier.notify` *after* it committed
the final state. That order means a wake-up can never be missed: either the read
already sees the final state, or the notification comes later and finds the waiter.
Waiters live on the event loop of the request that created them; the worker wakes
them from its own thread with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Waiter:
    """One long-poll's wake-up signal."""

    def __init__(self, future_id: str) -> None:
        self.future_id = future_id
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Thread-safe: set the event on the waiter's loop."""
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout: float) -> bool:
        """Wait until woken or ``timeout`` s passed; returns whether it was woken."""
        try:
            async with asyncio.timeout(timeout):
                await self._event.wait()
        except TimeoutError:
            return False
        return True


class FutureNotifier:
    """Registry of long-poll waiters by future id.

    Example (inside a request)::

        waiter = notifier.register(future_id)
        try:
            state = read_state()
            if not final(state):
                await waiter.wait(timeout=wait)
        finally:
            notifier.unregister(waiter)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[Waiter]] = {}

    def register(self, future_id: str) -> Waiter:
        """A new waiter for ``future_id`` (call from the request's event loop)."""
        waiter = Waiter(future_id)
        with self._lock:
            self._waiters.setdefault(future_id, set()).add(waiter)
        return waiter

    def unregister(self, waiter: Waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(waiter.future_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[waiter.future_id]

    def notify(self, future_id: str) -> None:
        """Wake every waiter of ``future_id`` (any thread)."""
        with self._lock:
            waiters = list(self._waiters.get(future_id, ()))
        for waiter in waiters:
            waiter.wake()

    def waiting(self) -> int:
        """How many waiters are registered (for tests and metrics)."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())


__all__ = ["FutureNotifier", "Waiter"]
