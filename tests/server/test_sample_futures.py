"""SampleFutures: in-memory futures of sampling operations — tenant-scoped, bounded,
results kept for the retention period only."""

from __future__ import annotations

import time
from concurrent.futures import Future

import pytest
from tg_tinker.sampling_types import ComputeLogprobsResponse

from server.errors import RateLimitError, ServiceUnavailableError, ValidationError
from server.queue import FutureNotifier
from server.services.sample_futures import SampleFutures

RESULT = ComputeLogprobsResponse(logprobs=[None, -1.5])


def track(futures: SampleFutures, tenant: str = "t1", owner: str = "smp_1") -> tuple[str, Future]:
    work: Future = Future()
    ref = futures.track(tenant_id=tenant, owner_id=owner, operation="sample", work=work)
    return ref.future_id, work


def test_states_results_and_errors_are_the_tenants_only() -> None:
    futures = SampleFutures(notifier=FutureNotifier())
    fid, work = track(futures)
    assert futures.read(tenant_id="t1", future_id=fid).status == "pending"
    assert futures.read(tenant_id="t2", future_id=fid) is None  # another tenant: unknown
    assert futures.cancel(tenant_id="t2", future_id=fid) is None
    work.set_running_or_notify_cancel()
    assert futures.read(tenant_id="t1", future_id=fid).status == "running"
    work.set_result(RESULT)
    state = futures.read(tenant_id="t1", future_id=fid)
    assert state.status == "completed" and state.result == RESULT.model_dump(mode="json")
    assert state.run_id == "smp_1" and state.seq == 0
    fid2, work2 = track(futures)
    work2.set_exception(ValidationError("too long", field="prompt"))
    failed = futures.read(tenant_id="t1", future_id=fid2)
    assert failed.status == "failed" and failed.error.field == "prompt" and failed.seq == 1
    fid3, _ = track(futures)
    assert futures.cancel(tenant_id="t1", future_id=fid3).cancelled
    assert futures.read(tenant_id="t1", future_id=fid3).status == "cancelled"
    fid4, work4 = track(futures)
    work4.set_exception(RuntimeError("internal detail"))
    opaque = futures.read(tenant_id="t1", future_id=fid4).error
    assert opaque.category == "server" and "internal detail" not in opaque.detail


def test_one_tenant_cannot_queue_without_bound() -> None:
    futures = SampleFutures(notifier=FutureNotifier(), max_in_flight_per_tenant=3)
    works = [track(futures)[1] for _ in range(3)]
    with pytest.raises(RateLimitError):
        track(futures)
    track(futures, tenant="t2")  # other tenants are not affected
    works[0].set_result(RESULT)
    track(futures)  # room again once one finished


def test_finished_results_expire_and_the_table_is_bounded() -> None:
    futures = SampleFutures(notifier=FutureNotifier(), retention_s=0.05, max_entries=2)
    fid, work = track(futures)
    work.set_result(RESULT)
    time.sleep(0.1)
    track(futures)
    assert futures.read(tenant_id="t1", future_id=fid) is None  # expired
    track(futures)
    with pytest.raises(ServiceUnavailableError):
        track(futures)  # two unfinished: full
