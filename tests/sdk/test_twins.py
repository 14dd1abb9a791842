"""Every sync method and its ``_async`` twin put the same request on the wire:
method, URL (path and query), body bytes and headers (each ``POST`` with its own
``Idempotency-Key``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest
from tg_tinker import Datum, ServiceClient, TrainingClient, TrainingConfig

from tests.sdk.fakes import INFO_RESULT, OPTIM_RESULT, FakeAPI, future_ref, future_state, run_json

RUN = "/v1/training_runs/run-1"
FUT = "/v1/futures/fut-1"
DATUM = Datum(model_input=[1], loss_fn_inputs={"target_tokens": [2]})
ARTIFACT = {
    "artifact_id": "art-1",
    "run_id": "run-1",
    "kind": "training_state",
    "name": "ckpt",
    "path": "tensafe://run-1/weights/ckpt",
    "size_bytes": 3,
    "content_hash": "00" * 32,
    "step": 1,
    "created_at": "2025-01-01T00:00:00Z",
}
SAMPLER = {
    "sampler_id": "smp-1",
    "source": "checkpoint",
    "base_model": "tiny-llama",
    "model_path": "tensafe://run-1/sampler_weights/w",
    "created_at": "2025-01-01T00:00:00Z",
}
SAMPLED = {
    "sequences": [
        {"tokens": [5], "logprobs": [-0.1], "model_logprobs": [-0.2], "stop_reason": "length"}
    ]
}
SAVED_FOR_SAMPLER = {
    "artifact_id": "art-2",
    "path": "tensafe://run-1/sampler_weights/w",
    "size_bytes": 3,
    "content_hash": "00" * 32,
}


@pytest.fixture
def routes(api: FakeAPI) -> FakeAPI:
    api.on("POST", rf"{RUN}/[a-z_]+", httpx.Response(202, json=future_ref()))  # before heartbeat
    run = httpx.Response(200, json=run_json())
    api.on("GET", RUN, run)
    api.on("POST", "/v1/training_runs", run)
    api.on("POST", f"{RUN}/heartbeat", run)
    api.on("GET", "/v1/training_runs", httpx.Response(200, json={"runs": [run_json()]}))
    api.on("GET", f"{RUN}/info", httpx.Response(200, json=INFO_RESULT))
    api.on("GET", "/v1/artifacts/art-1", httpx.Response(200, json=ARTIFACT))
    api.on("GET", "/v1/artifacts", httpx.Response(200, json={"artifacts": [ARTIFACT]}))
    api.on("GET", "/v1/keys/export", httpx.Response(200, content=b"{}"))
    api.on("GET", FUT, future_state("completed", result=OPTIM_RESULT))
    cancel = {"cancelled": True, "status": "cancelled"}
    api.on("POST", f"{FUT}/cancel", httpx.Response(200, json=cancel))
    api.on("POST", "/v1/samplers", httpx.Response(201, json=SAMPLER))
    api.on("GET", "/v1/samplers/smp-1", httpx.Response(200, json=SAMPLER))
    sampled = future_ref("fut-2", operation="sample")
    api.on("POST", "/v1/samplers/smp-1/[a-z_]+", httpx.Response(202, json=sampled))
    api.on("GET", "/v1/futures/fut-2", future_state("completed", future_id="fut-2", result=SAMPLED))
    saved = future_ref("fut-3", operation="save_weights_for_sampler")
    api.on("POST", f"{RUN}/save_weights_for_sampler", httpx.Response(202, json=saved))
    api.on("GET", "/v1/futures/fut-3", future_state("completed", result=SAVED_FOR_SAMPLER))
    return api


def _wire(request: httpx.Request) -> tuple[str, str, bytes, list[tuple[str, str]], bool]:
    headers = sorted((k, v) for k, v in request.headers.items() if k != "idempotency-key")
    keyed = "idempotency-key" in request.headers
    return request.method, str(request.url), request.content, headers, keyed


Call = Callable[[ServiceClient, TrainingClient], object]
ACall = Callable[[ServiceClient, TrainingClient], Awaitable[object]]

TWINS: dict[str, tuple[Call, ACall]] = {
    "create_training_client": (
        lambda s, t: s.create_training_client(TrainingConfig()),
        lambda s, t: s.create_training_client_async(TrainingConfig()),
    ),
    "create_lora_training_client": (
        lambda s, t: s.create_lora_training_client("m", 4, dropout=0.1),
        lambda s, t: s.create_lora_training_client_async("m", 4, dropout=0.1),
    ),
    "get_training_client": (
        lambda s, t: s.get_training_client("run-1"),
        lambda s, t: s.get_training_client_async("run-1"),
    ),
    "list_training_runs": (
        lambda s, t: s.list_training_runs(),
        lambda s, t: s.list_training_runs_async(),
    ),
    "get_artifact": (
        lambda s, t: s.get_artifact("art-1"),
        lambda s, t: s.get_artifact_async("art-1"),
    ),
    "list_artifacts": (
        lambda s, t: s.list_artifacts("run-1"),
        lambda s, t: s.list_artifacts_async("run-1"),
    ),
    "refresh": (lambda s, t: t.refresh(), lambda s, t: t.refresh_async()),
    "heartbeat": (lambda s, t: t.heartbeat(), lambda s, t: t.heartbeat_async()),
    "get_info": (lambda s, t: t.get_info(), lambda s, t: t.get_info_async()),
    "forward": (lambda s, t: t.forward([DATUM]), lambda s, t: t.forward_async([DATUM])),
    "forward_backward": (
        lambda s, t: t.forward_backward([DATUM], "cross_entropy", {"scale": 2.0}),
        lambda s, t: t.forward_backward_async([DATUM], "cross_entropy", {"scale": 2.0}),
    ),
    "optim_step": (
        lambda s, t: t.optim_step(apply_dp_noise=False),
        lambda s, t: t.optim_step_async(apply_dp_noise=False),
    ),
    "save_state": (
        lambda s, t: t.save_state("s", include_optimizer=False, metadata={"k": 1}),
        lambda s, t: t.save_state_async("s", include_optimizer=False, metadata={"k": 1}),
    ),
    "load_state": (
        lambda s, t: t.load_state(artifact_id="a"),
        lambda s, t: t.load_state_async(artifact_id="a"),
    ),
    "save_weights_for_sampler": (
        lambda s, t: t.save_weights_for_sampler("w"),
        lambda s, t: t.save_weights_for_sampler_async("w"),
    ),
    "unload_model": (lambda s, t: t.unload_model(), lambda s, t: t.unload_model_async()),
    "create_sampling_client": (
        lambda s, t: s.create_sampling_client("tensafe://run-1/sampler_weights/w"),
        lambda s, t: s.create_sampling_client_async("tensafe://run-1/sampler_weights/w"),
    ),
    "save_weights_and_get_sampling_client": (
        lambda s, t: t.save_weights_and_get_sampling_client("w"),
        lambda s, t: t.save_weights_and_get_sampling_client_async("w"),
    ),
    "sample": (
        lambda s, t: (
            s.create_sampling_client(base_model="m").sample([1, 2], 2, {"seed": 1}).result()
        ),
        lambda s, t: _sample_async(s),
    ),
    "compute_logprobs": (
        lambda s, t: s.create_sampling_client(base_model="m").compute_logprobs([1], topk=2),
        lambda s, t: _logprobs_async(s),
    ),
    "result": (
        lambda s, t: t.optim_step().result(),
        lambda s, t: _then_result(t.optim_step_async()),
    ),
    "cancel": (
        lambda s, t: t.optim_step().cancel(),
        lambda s, t: _then_cancel(t.optim_step_async()),
    ),
}


async def _sample_async(service: ServiceClient) -> object:
    sampler = await service.create_sampling_client_async(base_model="m")
    return await (await sampler.sample_async([1, 2], 2, {"seed": 1})).result_async()


async def _logprobs_async(service: ServiceClient) -> object:
    sampler = await service.create_sampling_client_async(base_model="m")
    return await sampler.compute_logprobs_async([1], topk=2)


async def _then_result(submitted: Awaitable[object]) -> object:
    return await (await submitted).result_async()  # type: ignore[attr-defined]


async def _then_cancel(submitted: Awaitable[object]) -> object:
    return await (await submitted).cancel_async()  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(TWINS))
def test_sync_and_async_twins_send_the_same_requests(name, service, routes, training_client):
    sync, async_ = TWINS[name]
    start = len(routes.requests)
    sync(service, training_client)
    middle = len(routes.requests)
    asyncio.run(async_(service, training_client))  # type: ignore[arg-type]
    sent_sync = [_wire(r) for r in routes.requests[start:middle]]
    sent_async = [_wire(r) for r in routes.requests[middle:]]
    assert sent_sync and sent_sync == sent_async
    keys = [r.headers.get("idempotency-key") for r in routes.requests[start:]]
    posted = [k for k in keys if k is not None]
    assert len(set(posted)) == len(posted)  # one key per logical POST


def test_export_tenant_key_twins_send_the_same_request(service, routes, tmp_path):
    service.export_tenant_key(tmp_path / "a.json")
    asyncio.run(service.export_tenant_key_async(tmp_path / "b.json"))
    first, second = (_wire(r) for r in routes.requests[-2:])
    assert first == second and first[:2] == ("GET", "http://localhost:8000/v1/keys/export")
