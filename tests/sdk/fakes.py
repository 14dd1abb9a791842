"""Test doubles for the SDK unit tests: an ``httpx.MockTransport`` route table and
canned wire bodies. Not a server; it makes no promise about server behaviour."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx

BASE_URL = "http://localhost:8000"
API_KEY = "tsk-test-key"
NOW = datetime(2025, 1, 1, tzinfo=UTC).isoformat()

Handler = Callable[[httpx.Request, re.Match[str]], httpx.Response]


def _frozen(response: httpx.Response) -> tuple[int, list[tuple[str, str]], bytes]:
    response.read()
    return response.status_code, list(response.headers.multi_items()), response.content


def _thaw(frozen: tuple[int, list[tuple[str, str]], bytes]) -> httpx.Response:
    # A fresh Response per request: a response body can be streamed only once.
    status, headers, content = frozen
    return httpx.Response(status, headers=headers, content=content)


class FakeAPI:
    """Routes requests to per-test handlers and records every request.

    ``api.on("GET", r"/v1/futures/(?P<id>[^/]+)", handler)``; a handler may also be
    a response (returned every time) or a list of them (consumed in order; the last
    one repeats).
    """

    def __init__(self) -> None:
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.requests: list[httpx.Request] = []

    def on(
        self, method: str, pattern: str, handler: Handler | httpx.Response | list[httpx.Response]
    ) -> None:
        if isinstance(handler, httpx.Response):
            handler = [handler]
        if isinstance(handler, list):
            queue = [_frozen(r) for r in handler]

            def handler(request: httpx.Request, match: re.Match[str]) -> httpx.Response:
                return _thaw(queue.pop(0) if len(queue) > 1 else queue[0])

        self.routes.insert(0, (method, re.compile(pattern + r"\Z"), handler))

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        for method, pattern, handler in self.routes:
            match = pattern.match(request.url.path)
            if method == request.method and match:
                return handler(request, match)
        return httpx.Response(
            404, json={"error": "NotFoundError", "category": "user", "detail": "no route"}
        )

    def sent(self, method: str, path_regex: str) -> list[httpx.Request]:
        pattern = re.compile(path_regex + r"\Z")
        return [r for r in self.requests if r.method == method and pattern.match(r.url.path)]


def run_json(run_id: str = "run-1", *, status: str = "READY", step: int = 0) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "status": status,
        "step": step,
        "config": {"model_ref": "smollm2-135m-instruct"},
        "created_at": NOW,
    }


def future_ref(future_id: str = "fut-1", *, operation: str = "forward_backward", seq: int = 1):
    return {"future_id": future_id, "run_id": "run-1", "operation": operation, "seq": seq}


def future_state(
    status: str,
    *,
    future_id: str = "fut-1",
    operation: str = "forward_backward",
    seq: int = 1,
    result: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
) -> httpx.Response:
    body = {
        **future_ref(future_id, operation=operation, seq=seq),
        "status": status,
        "result": result,
        "error": error,
        "created_at": NOW,
    }
    return httpx.Response(200, json=body)


INFO_RESULT = {
    "model_data": {"arch": "llama", "model_name": "smollm2-135m-instruct"},
    "model_id": "run-1",
    "is_lora": True,
    "lora_rank": 16,
    "model_name": "smollm2-135m-instruct",
}


def tensor(values: list[float]) -> dict[str, Any]:
    return {"data": values, "dtype": "float32", "shape": [len(values)]}


FB_RESULT = {
    "loss_fn_output_type": "cross_entropy",
    "loss_fn_outputs": [
        {"logprobs": tensor([-8.9375, -1.0]), "elementwise_loss": tensor([8.9375, 1.0])}
    ],
    "metrics": {"loss:mean": 4.96875, "num_examples:sum": 1.0, "step:max": 0.0},
    "loss": 4.96875,
    "grad_norm": 0.5,
    "tokens_processed": 2,
}

OPTIM_RESULT = {
    "step": 1,
    "learning_rate": 0.0001,
    "metrics": {"step:max": 1.0, "learning_rate:mean": 0.0001},
    "dp_metrics": {
        "epsilon_spent": 0.25,
        "delta": 1e-5,
        "noise_multiplier": 1.1,
        "sample_rate": 0.01,
        "max_grad_norm": 1.0,
        "expected_batch_size": 10.0,
        "accountant": "prv",
        "steps": 1,
    },
}
