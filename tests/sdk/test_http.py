"""Auth headers, error mapping and the retry policy (GETs and unsent requests only)."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from tg_tinker import (
    APIConnectionError,
    AuthenticationError,
    BudgetExceededError,
    ConflictError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ServiceClient,
    TGTinkerError,
    ValidationError,
)
from tg_tinker._http import backoff_delay, should_retry_exception, should_retry_status

from tests.sdk.fakes import API_KEY, BASE_URL, FakeAPI, run_json

RUN = r"/v1/training_runs/run-1"


def _error(status: int, name: str, detail: str = "nope", field: str | None = None, **headers):
    category = "server" if status >= 500 else "user"
    body = {"error": name, "category": category, "detail": detail, "field": field}
    return httpx.Response(status, json=body, headers=headers)


def test_every_request_carries_the_bearer_key_and_a_user_agent(service, api):
    api.on("GET", RUN, httpx.Response(200, json=run_json()))
    service.get_training_client("run-1")
    request = api.requests[-1]
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["user-agent"].startswith("tg-tinker/")
    assert str(request.url) == f"{BASE_URL}{RUN}"


@pytest.mark.parametrize(
    ("status", "name", "cls"),
    [
        (401, "AuthenticationError", AuthenticationError),
        (404, "NotFoundError", NotFoundError),
        (409, "BudgetExceededError", BudgetExceededError),
        (409, "ConflictError", ConflictError),
        (422, "ValidationError", ValidationError),
    ],
)
def test_error_bodies_become_typed_exceptions(service, api, status, name, cls):
    api.on("GET", RUN, _error(status, name, "explained", field="config.rank"))
    with pytest.raises(cls) as info:
        service.get_training_client("run-1")
    assert info.value.status_code == status
    assert info.value.field == "config.rank"
    assert "explained" in str(info.value)
    assert len(api.requests) == 1  # 4xx is never retried


def test_a_401_message_points_at_the_api_key(service, api):
    api.on("GET", RUN, _error(401, "AuthenticationError", "bad key"))
    with pytest.raises(AuthenticationError, match="TG_TINKER_API_KEY"):
        service.get_training_client("run-1")


def test_a_non_errorbody_response_still_maps_by_status(service, api):
    api.on("GET", RUN, httpx.Response(404, json={"detail": "Not Found"}))
    with pytest.raises(NotFoundError, match="Not Found"):
        service.get_training_client("run-1")
    api.on("GET", RUN, httpx.Response(502, text="<html>bad gateway</html>"))
    with pytest.raises(ServerError, match="bad gateway"):
        service.get_training_client("run-1")


def test_a_malformed_success_body_is_a_server_error(service, api):
    api.on("GET", RUN, httpx.Response(200, json={"run_id": "run-1"}))
    with pytest.raises(ServerError, match="TrainingRun"):
        service.get_training_client("run-1")


def test_get_is_retried_on_503_then_succeeds(service, api, sleeps):
    api.on(
        "GET",
        RUN,
        [
            _error(503, "ServerError"),
            _error(503, "ServerError"),
            httpx.Response(200, json=run_json()),
        ],
    )
    assert service.get_training_client("run-1").run_id == "run-1"
    assert len(api.requests) == 3
    assert len(sleeps) == 2 and all(0 < s <= 8 for s in sleeps)


def test_get_gives_up_after_max_retries(api, sleeps):
    api.on("GET", RUN, _error(503, "ServerError", "overloaded"))
    client = ServiceClient(
        BASE_URL, api_key=API_KEY, max_retries=2, transport=httpx.MockTransport(api)
    )
    client._http.sleep = sleeps.append
    with pytest.raises(ServerError, match="overloaded"):
        client.get_training_client("run-1")
    assert len(api.requests) == 3


def test_get_is_retried_after_a_read_error(sleeps):
    calls = []

    def flaky(request, match):
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ReadError("connection reset", request=request)
        return httpx.Response(200, json=run_json())

    api = FakeAPI()
    api.on("GET", RUN, flaky)
    client = ServiceClient(BASE_URL, api_key=API_KEY, transport=httpx.MockTransport(api))
    client._http.sleep = sleeps.append
    assert client.get_training_client("run-1").run_id == "run-1"
    assert len(calls) == 2


def _post_route(api: FakeAPI, outcomes: list):
    seen: list[httpx.Request] = []

    def handler(request, match):
        seen.append(request)
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    api.on("POST", r"/v1/training_runs", handler)
    return seen


def test_post_is_not_retried_when_it_may_have_been_applied(service, api):
    seen = _post_route(api, [httpx.ReadError("reset after send")])
    with pytest.raises(APIConnectionError, match="may have reached the server"):
        service.create_lora_training_client("m")
    assert len(seen) == 1


def test_post_is_not_retried_on_5xx(service, api):
    seen = _post_route(api, [_error(503, "ServerError"), httpx.Response(201, json=run_json())])
    with pytest.raises(ServerError):
        service.create_lora_training_client("m")
    assert len(seen) == 1


def test_post_is_retried_when_it_never_left_and_keeps_its_idempotency_key(service, api, sleeps):
    seen = _post_route(
        api,
        [
            httpx.ConnectError("refused"),
            _error(429, "RateLimitError", **{"Retry-After": "3"}),
            httpx.Response(201, json=run_json()),
        ],
    )
    assert service.create_lora_training_client("m").run_id == "run-1"
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 3 and len(keys) == 1 and len(next(iter(keys))) == 32
    assert sleeps[1] == 3.0  # Retry-After is honoured


def test_each_logical_post_gets_its_own_idempotency_key(service, api):
    seen = _post_route(api, [httpx.Response(201, json=run_json()) for _ in range(2)])
    service.create_lora_training_client("m")
    service.create_lora_training_client("m")
    assert seen[0].headers["idempotency-key"] != seen[1].headers["idempotency-key"]


def test_rate_limit_error_carries_retry_after_when_retries_run_out(api):
    api.on("GET", RUN, _error(429, "RateLimitError", **{"Retry-After": "7"}))
    client = ServiceClient(
        BASE_URL, api_key=API_KEY, max_retries=0, transport=httpx.MockTransport(api)
    )
    with pytest.raises(RateLimitError) as info:
        client.get_training_client("run-1")
    assert info.value.retry_after == 7.0


def test_connection_failure_becomes_api_connection_error(sleeps):
    def down(request):
        raise httpx.ConnectError("connection refused", request=request)

    client = ServiceClient(
        BASE_URL, api_key=API_KEY, max_retries=1, transport=httpx.MockTransport(down)
    )
    client._http.sleep = sleeps.append
    with pytest.raises(APIConnectionError, match="connection refused") as info:
        client.list_training_runs()
    assert isinstance(info.value, ConnectionError)
    assert len(sleeps) == 1


def test_retry_policy_table():
    assert should_retry_exception("POST", httpx.ConnectError("x"))
    assert should_retry_exception("POST", httpx.ConnectTimeout("x"))
    assert not should_retry_exception("POST", httpx.ReadTimeout("x"))
    assert not should_retry_exception("POST", httpx.RemoteProtocolError("x"))
    assert should_retry_exception("GET", httpx.ReadTimeout("x"))
    assert not should_retry_exception("GET", httpx.UnsupportedProtocol("x"))
    assert should_retry_status("POST", 429) and should_retry_status("GET", 429)
    assert not should_retry_status("POST", 503)
    assert should_retry_status("GET", 503)
    assert not should_retry_status("GET", 500)


def test_backoff_grows_and_is_capped():
    delays = [backoff_delay(a) for a in range(8)]
    assert all(0.25 <= d <= 8.0 for d in delays)
    assert backoff_delay(10) >= 4.0  # capped at 8 with jitter in [0.5, 1]
    assert backoff_delay(0, httpx.Response(429, headers={"Retry-After": "1000"})) == 60.0


def test_closed_client_refuses_requests(service, api):
    service.close()
    with pytest.raises(TGTinkerError, match="closed"):
        service.list_training_runs()


def test_async_requests_use_the_same_policy(service, api, sleeps):
    api.on(
        "GET",
        RUN,
        [_error(503, "ServerError"), httpx.Response(200, json=run_json())],
    )

    async def main():
        tc = await service.get_training_client_async("run-1")
        await service.aclose()
        return tc

    assert asyncio.run(main()).run_id == "run-1"
    assert len(api.requests) == 2 and len(sleeps) == 1


def test_async_works_across_separate_event_loops(service, api):
    api.on("GET", r"/v1/training_runs", httpx.Response(200, json={"runs": [run_json()]}))
    for _ in range(2):  # a fresh loop each time: the async client must not be reused
        runs = asyncio.run(service.list_training_runs_async())
        assert [r.run_id for r in runs] == ["run-1"]
