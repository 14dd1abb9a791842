"""SDK unit tests: the client against an in-process fake transport.

These test SDK logic only (request shapes, error mapping, long polling, retries,
verified downloads) with :class:`tests.sdk.fakes.FakeAPI`, an ``httpx.MockTransport``
handler. End-to-end tests against the real server live in ``tests/integration``.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import tg_tinker

if getattr(tg_tinker, "__file__", None) is None:  # pragma: no cover - environment guard
    raise RuntimeError(
        "tg_tinker was imported as a namespace package: the editable install predates "
        "sdk/tg_tinker/__init__.py. Refresh it with `.venv/bin/python -m pip install "
        "--no-deps -e .` (or run with PYTHONPATH=sdk)."
    )

from tg_tinker import ServiceClient

from tests.sdk.fakes import API_KEY, BASE_URL, FakeAPI, run_json


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


@pytest.fixture
def sleeps() -> list[float]:
    """Backoff delays the client asked for (the client does not actually sleep)."""
    return []


@pytest.fixture
def service(api: FakeAPI, sleeps: list[float]) -> Iterator[ServiceClient]:
    client = ServiceClient(BASE_URL, api_key=API_KEY, transport=httpx.MockTransport(api))
    client._http.sleep = sleeps.append

    async def record(delay: float) -> None:
        sleeps.append(delay)

    client._http.async_sleep = record
    yield client
    client.close()


@pytest.fixture
def training_client(service: ServiceClient, api: FakeAPI) -> tg_tinker.TrainingClient:
    api.on("GET", r"/v1/training_runs/run-1", httpx.Response(200, json=run_json()))
    return service.get_training_client("run-1")
