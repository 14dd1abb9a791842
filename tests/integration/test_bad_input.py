"""Bad input over real HTTP: a 4xx that names the field; the server keeps serving."""

from __future__ import annotations

import httpx
import pytest
from tg_tinker import ServiceClient, ValidationError
from tg_tinker.types import BatchData

from tests.integration.conftest import LiveServer
from tests.integration.test_end_to_end import random_batch, tiny_config

pytestmark = pytest.mark.integration


def test_bad_requests_then_normal_service(live_server: LiveServer) -> None:
    tenant = live_server.create_tenant()
    headers = {"Authorization": f"Bearer {tenant['api_key']}"}
    with ServiceClient(live_server.url, api_key=tenant["api_key"]) as service:
        tc = service.create_training_client(tiny_config())
        tc.forward(random_batch(0)).result(timeout=120)
        base = f"{live_server.url}/v1/training_runs/{tc.run_id}"
        cases = [
            (
                "forward_backward",
                {"batch": {"input_ids": [[5, 49152]]}},
                422,
                "batch.input_ids[0]",
            ),
            (
                "forward_backward",
                {"batch": {"input_ids": [[1, 2], [3]]}},
                422,
                "batch.input_ids[1]",
            ),
            ("optim_step", {"adam_params": {"beta1": 2}}, 422, "adam_params.beta1"),
            ("optim_step", {"apply_dp_noise": False}, 422, "apply_dp_noise"),
            ("load_state", {"artifact_id": "art_missing"}, 404, "artifact_id"),
        ]
        for op, body, status, field in cases:
            response = httpx.post(f"{base}/{op}", json=body, headers=headers, timeout=30)
            assert response.status_code == status, response.text
            error = response.json()
            assert error["field"] == field and error["category"] == "user" and error["detail"]
        broken = httpx.post(
            f"{base}/forward_backward",
            content=b'{"batch": {"input_ids": [[1, 2',
            headers={**headers, "Content-Type": "application/json"},
            timeout=30,
        )
        assert broken.status_code == 422 and broken.json()["error"] == "RequestValidationError"
        huge = httpx.post(
            f"{base}/forward_backward",
            content=b"x" * (33 * 1024 * 1024),
            headers={**headers, "Content-Type": "application/json"},
            timeout=60,
        )
        assert huge.status_code == 413 and huge.json()["field"] == "body"
        assert httpx.get(f"{live_server.url}/v1/nowhere", headers=headers).status_code == 404
        wrong = httpx.get(f"{live_server.url}/v1/training_runs", headers={"Authorization": "x"})
        assert wrong.status_code == 401

        with pytest.raises(ValidationError) as raised:  # the SDK's typed error
            tc.forward_backward(BatchData(input_ids=[[1, 70000]])).result(timeout=60)
        assert raised.value.field == "batch.input_ids[0]"

        assert httpx.get(f"{live_server.url}/healthz").json() == {"status": "ok"}
        assert tc.forward_backward(random_batch(1)).result(timeout=120).loss > 0
        assert tc.optim_step().result(timeout=120).step == 1
