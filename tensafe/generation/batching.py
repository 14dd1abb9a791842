"""Coalescing concurrent sample requests into shared forward passes.

Requests submitted from any thread go to a queue. A single worker thread takes
the first waiting request, keeps collecting for a short window (``window_s``,
default 10 ms) or until ``max_batch_sequences`` sequences are gathered, and runs
the lot through :meth:`Sampler.sample_batch`, which decodes requests that use the
same weights (same adapter) as one batch. Each request gets its own future.

Errors stay with their request: each request is validated on its own first (an
invalid one fails only its future), and if a batch fails while running, its
requests are retried one by one so that only the faulty one fails.

Example::

    with SampleBatcher(sampler=sampler) as batcher:
        futures = [batcher.submit(request) for request in requests]  # from any threads
        responses = [f.result() for f in futures]
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from tensafe.errors import ConfigError, EngineStateError
from tensafe.generation.params import SampleRequest
from tensafe.generation.results import SampleResponse
from tensafe.generation.sampler import Sampler


@dataclass(eq=False)
class _Pending:
    request: SampleRequest
    future: Future[SampleResponse] = field(default_factory=Future)


_CLOSE = object()


class SampleBatcher:
    """Runs concurrently submitted requests as batches on one :class:`Sampler`.

    Args:
        sampler: the sampler to run on.
        window_s: how long to wait for more requests after the first one, in
            seconds (≥ 0; 0.005–0.02 suits interactive use).
        max_batch_sequences: stop collecting once this many sequences (the sum of
            ``num_samples``) are waiting; defaults to the sampler's limit.

    Raises:
        ConfigError: (``window_s``, ``max_batch_sequences``) out of range.
    """

    def __init__(
        self,
        *,
        sampler: Sampler,
        window_s: float = 0.01,
        max_batch_sequences: int | None = None,
    ) -> None:
        if not isinstance(window_s, (int, float)) or not 0 <= window_s <= 10:
            raise ConfigError(
                "window_s", f"must be a number of seconds in [0, 10], got {window_s!r}"
            )
        cap = (
            sampler.limits.max_batch_sequences
            if max_batch_sequences is None
            else max_batch_sequences
        )
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise ConfigError("max_batch_sequences", f"must be an integer ≥ 1, got {cap!r}")
        self.sampler = sampler
        self.window_s = float(window_s)
        self.max_batch_sequences = cap
        self.batches_run = 0  # number of sample_batch calls made (for tests and metrics)
        self._queue: queue.Queue[_Pending | object] = queue.Queue()
        self._closed = False
        self._close_lock = threading.Lock()
        self._worker = threading.Thread(
            target=self._serve, name="tensafe-sample-batcher", daemon=True
        )
        self._worker.start()

    def submit(self, request: SampleRequest) -> Future[SampleResponse]:
        """Queue ``request``; its future resolves to its :class:`SampleResponse` or
        fails with its own error (a :class:`ConfigError` for an invalid request).

        Raises:
            EngineStateError: the batcher is closed.
        """
        pending = _Pending(request)
        with self._close_lock:
            if self._closed:
                raise EngineStateError("the sample batcher is closed")
            self._queue.put(pending)
        return pending.future

    def sample(self, request: SampleRequest, *, timeout: float | None = None) -> SampleResponse:
        """``submit(request).result(timeout)``."""
        return self.submit(request).result(timeout)

    def close(self, *, timeout: float | None = None) -> None:
        """Finish the queued requests, then stop the worker thread. Idempotent."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_CLOSE)
        self._worker.join(timeout)

    def __enter__(self) -> SampleBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ worker
    def _serve(self) -> None:
        closing = False
        while not closing:
            first = self._queue.get()
            if first is _CLOSE:
                return
            batch, closing = self._collect(first)
            self._run(batch)

    def _collect(self, first: object) -> tuple[list[_Pending], bool]:
        """The first request and those arriving within the window; and whether the
        batcher was closed meanwhile."""
        batch: list[_Pending] = [first]  # type: ignore[list-item]
        size = batch[0].request.num_samples
        deadline = time.monotonic() + self.window_s
        while size < self.max_batch_sequences:
            remaining = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
            if item is _CLOSE:
                return batch, True
            assert isinstance(item, _Pending)
            batch.append(item)
            size += item.request.num_samples
        return batch, False

    def _run(self, batch: list[_Pending]) -> None:
        valid: list[_Pending] = []
        for pending in batch:
            if not pending.future.set_running_or_notify_cancel():
                continue  # cancelled while waiting
            try:
                self.sampler.validate(pending.request)
            except Exception as exc:
                pending.future.set_exception(exc)
                continue
            valid.append(pending)
        if not valid:
            return
        try:
            self.batches_run += 1
            responses = self.sampler.sample_batch([p.request for p in valid])
        except Exception as exc:
            if len(valid) == 1:
                valid[0].future.set_exception(exc)
                return
            for pending in valid:  # isolate the failure: one by one
                try:
                    self.batches_run += 1
                    pending.future.set_result(self.sampler.sample(pending.request))
                except Exception as single_exc:
                    pending.future.set_exception(single_exc)
            return
        for pending, response in zip(valid, responses, strict=True):
            pending.future.set_result(response)


__all__ = ["SampleBatcher"]
