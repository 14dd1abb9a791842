"""RunQueue: strict per-run order, concurrency across runs, failures contained."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from server.queue import QueuedOperation, RunQueue


def test_per_run_order_and_one_at_a_time() -> None:
    seen: dict[str, list[int]] = defaultdict(list)
    active: dict[str, int] = defaultdict(int)
    overlap = []
    lock = threading.Lock()
    done = threading.Event()

    def handler(run_id: str, item: QueuedOperation) -> None:
        future_id = item.future_id
        with lock:
            active[run_id] += 1
            if active[run_id] > 1:
                overlap.append(run_id)
        time.sleep(0.001)
        with lock:
            active[run_id] -= 1
            seen[run_id].append(int(future_id))
            if sum(len(v) for v in seen.values()) == 3 * 40:
                done.set()

    queue = RunQueue(handler=handler, threads=3)
    queue.start()
    for i in range(40):
        for run in ("a", "b", "c"):
            queue.enqueue(run, QueuedOperation(str(i)))
    assert done.wait(10)
    queue.stop()
    assert not overlap
    assert all(seen[run] == list(range(40)) for run in ("a", "b", "c"))


def test_runs_proceed_concurrently() -> None:
    release = threading.Event()
    started = threading.Event()
    b_done = threading.Event()

    def handler(run_id: str, item: QueuedOperation) -> None:
        if run_id == "slow":
            started.set()
            release.wait(5)
        else:
            b_done.set()

    queue = RunQueue(handler=handler, threads=2)
    queue.start()
    queue.enqueue("slow", QueuedOperation("1"))
    assert started.wait(5)
    queue.enqueue("fast", QueuedOperation("1"))
    assert b_done.wait(5), "a second run must not wait behind the first"
    release.set()
    queue.stop()


def test_a_crashing_handler_does_not_stop_the_worker() -> None:
    ran = []
    done = threading.Event()

    def handler(run_id: str, item: QueuedOperation) -> None:
        future_id = item.future_id
        ran.append(future_id)
        if future_id == "1":
            raise RuntimeError("boom")
        done.set()

    queue = RunQueue(handler=handler, threads=1)
    queue.start()
    queue.enqueue("r", QueuedOperation("1"))
    queue.enqueue("r", QueuedOperation("2"))
    assert done.wait(5)
    queue.stop()
    assert ran == ["1", "2"]
