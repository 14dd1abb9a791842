"""Tenant isolation: every route that takes an id answers 404 for another tenant's id.

The test walks ``app.routes``, so a new route with a path parameter is covered
automatically (and fails here until its parameter is known to the test).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from tests.server.harness import DP, TRAIN_AND_OFFICER, Harness, batch
from tests.server.test_datasets import records, register

BODIES: dict[str, dict[str, Any] | None] = {
    "forward": batch(),
    "forward_backward": batch(),
    "optim_step": {},
    "save_state": {"name": "intruder"},
    "save_weights_for_sampler": {"name": "intruder"},
    "unload": None,
    "heartbeat": None,
    "cancel": None,
    "{dataset_id}": {"epsilon_cap": 100.0},
    "draw_batch": {},
    "records": {"offset": 0, "records": [{"tokens": [1, 2]}]},
    "commit": None,
    "sample": {"prompt": {"chunks": [{"tokens": [1, 2]}]}},
    "compute_logprobs": {"prompt": {"chunks": [{"tokens": [1, 2]}]}},
    "finish": {"reason": {"type": "success"}},
    "{checkpoint_id}": None,
}


def tinker_headers(headers: dict[str, str]) -> dict[str, str]:
    """The same key as the Tinker client sends it (``X-API-Key: tml-<key>``)."""
    return {"X-API-Key": "tml-" + headers["Authorization"].removeprefix("Bearer ")}


def tinker_model(api: Harness, headers: dict[str, str]) -> tuple[str, str]:
    """A Tinker session and a (loaded) model in it: ``(session_id, model_id)``."""
    metadata = {f"tensafe.dp.{k}": str(v) for k, v in DP.items()}
    session = api.client.post(
        "/api/v1/create_session",
        json={"tags": [], "sdk_version": "0.38.0", "user_metadata": metadata},
        headers=tinker_headers(headers),
    )
    assert session.status_code == 200, session.text
    session_id = session.json()["session_id"]
    created = api.client.post(
        "/api/v1/create_model",
        json={
            "session_id": session_id,
            "model_seq_id": 0,
            "base_model": "tiny-llama",
            "lora_config": {"rank": 2},
        },
        headers=tinker_headers(headers),
    )
    assert created.status_code == 200, created.text
    api.wait(headers, created.json()["request_id"])
    return session_id, created.json()["model_id"]


def api_routes(app: FastAPI) -> Iterator[tuple[str, set[str]]]:
    """``(path, methods)`` of every API route, through included routers (newer
    FastAPI keeps included routers nested in ``app.routes``)."""
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:  # older FastAPI: app.routes is already flat
        for route in app.routes:
            if isinstance(route, APIRoute):
                yield route.path, set(route.methods)
        return
    for context in iter_route_contexts(app.routes):
        if isinstance(context.original_route, APIRoute):
            yield str(context.path), set(context.methods or ())


def test_every_id_route_is_404_for_another_tenant(api: Harness) -> None:
    owner = api.tenant(scopes=TRAIN_AND_OFFICER)
    run_id = api.create_run(owner)
    api.call(owner, run_id, "forward_backward", batch())
    api.call(owner, run_id, "optim_step", {})
    saved = api.call(owner, run_id, "save_state", {"name": "mine"})
    future_id = api.submit(owner, run_id, "forward", batch(1))
    api.wait(owner, future_id)
    dataset_id = register(api, owner, "iso", [records(2)])["dataset_id"]  # and its budget:
    budget = api.client.post(
        "/v1/budgets", json={"dataset_id": dataset_id, "epsilon_cap": 5.0}, headers=owner
    )
    assert budget.status_code == 201, budget.text
    sampler = api.client.post("/v1/samplers", json={"run_id": run_id}, headers=owner)
    assert sampler.status_code == 201, sampler.text
    session_id, model_id = tinker_model(api, owner)
    ids = {
        "session_id": session_id,
        "model_id": model_id,
        "checkpoint_id": "weights/mine",
        "run_id": run_id,
        "future_id": future_id,
        "artifact_id": saved["artifact_id"],
        "dataset_id": dataset_id,
        "sampler_id": sampler.json()["sampler_id"],
    }
    BODIES["load_state"] = {"artifact_id": saved["artifact_id"]}

    intruder = api.tenant(scopes=TRAIN_AND_OFFICER)
    checked = []
    for path, methods in api_routes(api.client.app):  # type: ignore[arg-type]
        path = re.sub(r"{(\w+):\w+}", r"{\1}", path)  # {checkpoint_id:path} -> {checkpoint_id}
        params = re.findall(r"{(\w+)}", path)
        if not params:
            continue
        assert set(params) <= set(ids), f"{path}: teach this test the new parameter"
        url = path.format(**ids)
        tinker = path.startswith("/api/v1/")
        theirs = tinker_headers(intruder) if tinker else intruder
        ours = tinker_headers(owner) if tinker else owner
        for method in methods:
            if method == "GET":
                response = api.client.get(url, headers=theirs)
                mine = api.client.get(url, headers=ours)
                assert mine.status_code == 200, (url, mine.text)
            else:
                body = BODIES[path.rsplit("/", 1)[-1]]
                response = api.client.request(method, url, json=body, headers=theirs)
            assert response.status_code == 404, (method, url, response.status_code, response.text)
            assert response.json()["error"] == "NotFoundError"
            assert run_id not in response.text or "run_id" in response.json()["field"]
            checked.append((method, path))
    assert len(checked) >= 14, checked

    listing = api.client.get("/v1/artifacts", params={"run_id": run_id}, headers=intruder)
    assert listing.status_code == 404
    assert api.client.get("/v1/artifacts", headers=intruder).json() == {"artifacts": []}
    assert api.client.get("/v1/training_runs", headers=intruder).json() == {"runs": []}

    # a checkpoint of another tenant cannot be loaded either, even into one's own run
    own_run = api.create_run(intruder)
    response = api.client.post(
        f"/v1/training_runs/{own_run}/load_state",
        json={"artifact_id": saved["artifact_id"]},
        headers=intruder,
    )
    assert response.status_code == 404
    response = api.client.post(
        f"/v1/training_runs/{own_run}/load_state", json={"path": saved["path"]}, headers=intruder
    )
    assert response.status_code == 404
    # nor sampled: not by run, checkpoint path or id; and a sampling future is unknown
    sampler_weights = api.call(owner, run_id, "save_weights_for_sampler", {"name": "mine"})
    for source in (
        {"run_id": run_id},
        {"model_path": sampler_weights["path"]},
        {"artifact_id": sampler_weights["artifact_id"]},
    ):
        response = api.client.post("/v1/samplers", json=source, headers=intruder)
        assert response.status_code == 404, (source, response.text)
        assert response.json()["error"] == "NotFoundError"
    sample = api.client.post(
        f"/v1/samplers/{ids['sampler_id']}/sample", json=BODIES["sample"], headers=owner
    )
    assert sample.status_code == 202
    sample_future = sample.json()["future_id"]
    assert api.wait(owner, sample_future)["status"] == "completed"
    for request in (
        api.client.get(f"/v1/futures/{sample_future}", headers=intruder),
        api.client.post(f"/v1/futures/{sample_future}/cancel", headers=intruder),
    ):
        assert request.status_code == 404, request.text
    # and nothing the intruder tried changed the owner's run
    assert api.run(owner, run_id)["step"] == 1
