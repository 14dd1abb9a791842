"""ServiceClient: configuration, run creation and listing, verified artifact pulls,
and the tenant key export."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import stat
import warnings

import httpx
import pytest
from tg_tinker import (
    APIConnectionError,
    ArtifactIntegrityError,
    DPConfig,
    LoRAConfig,
    NotFoundError,
    OptimizerConfig,
    PulledArtifact,
    ServiceClient,
    TrainingClient,
    TrainingConfig,
    ValidationError,
)

from tests.sdk.fakes import API_KEY, BASE_URL, FakeAPI, future_ref, future_state, run_json

BLOB = os.urandom(3 * (1 << 20) + 17)  # several stream chunks
BLOB_HASH = hashlib.sha256(BLOB).hexdigest()
CONTENT = r"/v1/artifacts/art-1/content"


# ------------------------------------------------------------------ configuration
def test_environment_fallbacks(monkeypatch):
    monkeypatch.setenv("TG_TINKER_BASE_URL", "http://127.0.0.1:9000/")
    monkeypatch.setenv("TG_TINKER_API_KEY", "from-env")
    seen = []
    client = ServiceClient(
        transport=httpx.MockTransport(
            lambda r: seen.append(r) or httpx.Response(200, json={"runs": []})
        )
    )
    client.list_training_runs()
    assert client.base_url == "http://127.0.0.1:9000"
    assert seen[0].headers["authorization"] == "Bearer from-env"
    assert API_KEY not in repr(client) and "from-env" not in repr(client)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"api_key": "k"}, "base_url"),
        ({"base_url": BASE_URL}, "api_key"),
        ({"base_url": "localhost:8000", "api_key": "k"}, "base_url"),
        ({"base_url": BASE_URL, "api_key": "k", "timeout": 0}, "timeout"),
        ({"base_url": BASE_URL, "api_key": "k", "max_retries": -1}, "max_retries"),
    ],
)
def test_missing_or_bad_settings_are_clear_errors(monkeypatch, kwargs, field):
    monkeypatch.delenv("TG_TINKER_BASE_URL", raising=False)
    monkeypatch.delenv("TG_TINKER_API_KEY", raising=False)
    with pytest.raises(ValidationError) as info:
        ServiceClient(**kwargs)
    assert info.value.field == field


def test_plain_http_to_a_remote_host_warns_loudly():
    with pytest.warns(UserWarning, match="unencrypted"):
        ServiceClient("http://tensafe.example.org", api_key="k").close()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ServiceClient("https://tensafe.example.org", api_key="k").close()
        ServiceClient("http://[::1]:8000", api_key="k").close()


def test_context_managers_close(api):
    with ServiceClient(BASE_URL, api_key="k", transport=httpx.MockTransport(api)) as client:
        pass
    assert client._http._closed

    async def main():
        async with ServiceClient(BASE_URL, api_key="k", transport=httpx.MockTransport(api)) as c:
            return c

    assert asyncio.run(main())._http._closed


# ------------------------------------------------------------------ training runs
def test_create_lora_training_client_sends_a_training_config(service, api):
    api.on("POST", r"/v1/training_runs", httpx.Response(201, json=run_json(status="INITIALIZING")))
    dp = DPConfig(noise_multiplier=1.0, dataset_size=1000, sample_rate=0.01)
    tc = service.create_lora_training_client(
        "smollm2-135m-instruct",
        rank=8,
        train_unembed=True,
        dp_config=dp,
        optimizer=OptimizerConfig(learning_rate=5e-4),
        metadata={"team": "x"},
    )
    assert isinstance(tc, TrainingClient) and tc.status == "INITIALIZING"
    sent = TrainingConfig.model_validate_json(api.requests[-1].content)
    assert sent.model_ref == "smollm2-135m-instruct"
    assert sent.lora_config == LoRAConfig(rank=8, alpha=16.0, train_unembed=True)
    assert sent.dp_config == dp
    assert sent.optimizer.learning_rate == 5e-4 and sent.metadata == {"team": "x"}


def test_create_lora_training_client_checks_arguments_locally(service, api):
    with pytest.raises(ValidationError) as info:
        service.create_lora_training_client("m", rank=0)
    assert info.value.field == "rank"
    assert not api.requests


def test_create_training_client_with_a_full_config(service, api):
    api.on("POST", r"/v1/training_runs", httpx.Response(201, json=run_json()))
    config = TrainingConfig(model_ref="m", lora_config=None, optimizer=OptimizerConfig(name="sgd"))
    service.create_training_client(config)
    assert TrainingConfig.model_validate_json(api.requests[-1].content) == config


def test_list_runs_and_clients(service, api):
    api.on(
        "GET",
        r"/v1/training_runs",
        httpx.Response(200, json={"runs": [run_json("a"), run_json("b", step=4)]}),
    )
    assert [r.run_id for r in service.list_training_runs()] == ["a", "b"]
    clients = service.list_training_clients()
    assert [(c.run_id, c.step) for c in clients] == [("a", 0), ("b", 4)]


def test_get_training_client_of_another_tenant_is_not_found(service, api):
    with pytest.raises(NotFoundError):
        service.get_training_client("someone-elses")


def _artifact_json(**overrides):
    return {
        "artifact_id": "art-1",
        "run_id": "old-run",
        "kind": "training_state",
        "name": "ckpt",
        "path": "tensafe://old-run/weights/ckpt",
        "size_bytes": len(BLOB),
        "content_hash": BLOB_HASH,
        "step": 10,
        "created_at": "2025-01-01T00:00:00Z",
        **overrides,
    }


@pytest.mark.parametrize(
    "ref",
    [{"path": "tensafe://old-run/weights/ckpt"}, {"artifact_id": "art-1"}],
)
def test_create_training_client_from_state(service, api, ref):
    old = run_json("old-run")
    old["config"] = {"model_ref": "special-model", "seed": 7}
    api.on("GET", r"/v1/training_runs/old-run", httpx.Response(200, json=old))
    api.on("GET", r"/v1/artifacts/art-1", httpx.Response(200, json=_artifact_json()))
    api.on("POST", r"/v1/training_runs", httpx.Response(201, json=run_json("new-run")))
    api.on(
        "POST",
        r"/v1/training_runs/new-run/load_state",
        httpx.Response(202, json=future_ref(operation="load_state")),
    )
    loaded = {
        "artifact_id": "art-1",
        "path": "tensafe://old-run/weights/ckpt",
        "step": 10,
        "status": "loaded",
    }
    api.on(
        "GET",
        r"/v1/futures/fut-1",
        future_state("completed", operation="load_state", result=loaded),
    )
    tc = service.create_training_client_from_state(**ref)
    assert tc.run_id == "new-run" and tc.step == 10
    created = TrainingConfig.model_validate_json(api.sent("POST", r"/v1/training_runs")[0].content)
    assert created.model_ref == "special-model" and created.seed == 7
    body = json.loads(api.sent("POST", r"/v1/training_runs/new-run/load_state")[0].content)
    assert {k: v for k, v in body.items() if v is not None} == {**ref, "include_optimizer": True}


def test_create_training_client_from_state_unloads_when_loading_fails(service, api):
    api.on("GET", r"/v1/training_runs/old-run", httpx.Response(200, json=run_json("old-run")))
    api.on("POST", r"/v1/training_runs", httpx.Response(201, json=run_json("new-run")))
    api.on("POST", r"/v1/training_runs/new-run/load_state", httpx.Response(202, json=future_ref()))
    api.on(
        "POST", r"/v1/training_runs/new-run/unload", httpx.Response(202, json=future_ref("fut-2"))
    )
    error = {"error": "IntegrityError", "category": "user", "detail": "integrity", "field": None}
    api.on("GET", r"/v1/futures/fut-1", future_state("failed", error=error))
    with pytest.raises(ArtifactIntegrityError):
        service.create_training_client_from_state("tensafe://old-run/weights/ckpt")
    assert api.sent("POST", r"/v1/training_runs/new-run/unload")


def test_create_training_client_from_state_rejects_bad_paths(service):
    with pytest.raises(ValidationError, match="tensafe://"):
        service.create_training_client_from_state("s3://bucket/x")
    with pytest.raises(ValidationError, match="exactly one"):
        service.create_training_client_from_state()


# ------------------------------------------------------------------ artifacts
def _content(body: bytes = BLOB, *, digest: str | None = BLOB_HASH, length: int | None = None):
    headers = {"Content-Length": str(len(body) if length is None else length)}
    if digest is not None:
        headers["X-Content-SHA256"] = digest
    return httpx.Response(200, content=body, headers=headers)


def test_list_artifacts_filters_by_run(service, api):
    api.on("GET", r"/v1/artifacts", httpx.Response(200, json={"artifacts": [_artifact_json()]}))
    assert [a.artifact_id for a in service.list_artifacts()] == ["art-1"]
    service.list_artifacts(run_id="old-run")
    assert api.requests[-1].url.params["run_id"] == "old-run"
    assert "run_id" not in api.requests[0].url.params


def test_pull_artifact_returns_verified_bytes(service, api):
    api.on("GET", CONTENT, _content())
    assert service.pull_artifact("art-1") == BLOB
    assert service.pull_artifact("art-1", expected_sha256=BLOB_HASH.upper()) == BLOB
    assert api.requests[-1].headers["accept-encoding"] == "identity"


@pytest.mark.parametrize(
    "response",
    [
        _content(digest="00" * 32),  # wrong hash
        _content(digest=None),  # no hash header: fail closed
        _content(BLOB[:-1] + bytes([BLOB[-1] ^ 1])),  # tampered byte
        _content(length=len(BLOB) + 5),  # declared longer than received
        _content(length=len(BLOB) - 5),  # declared shorter than received
    ],
)
def test_pull_artifact_integrity_failures(service, api, response):
    api.on("GET", CONTENT, response)
    with pytest.raises(ArtifactIntegrityError):
        service.pull_artifact("art-1")


def test_pull_artifact_checks_the_callers_expected_hash(service, api):
    api.on("GET", CONTENT, _content())
    with pytest.raises(ArtifactIntegrityError):
        service.pull_artifact("art-1", expected_sha256="11" * 32)


def test_pull_artifact_to_file(service, api, tmp_path):
    api.on("GET", r"/v1/artifacts/art-1", httpx.Response(200, json=_artifact_json()))
    api.on("GET", CONTENT, _content())
    out = service.pull_artifact_to_file("art-1", tmp_path / "ckpt.tsf")
    assert isinstance(out, PulledArtifact)
    assert out.path.read_bytes() == BLOB
    assert (out.size_bytes, out.content_hash, out.info.step) == (len(BLOB), BLOB_HASH, 10)
    assert os.listdir(tmp_path) == ["ckpt.tsf"]
    with pytest.raises(FileExistsError):
        service.pull_artifact_to_file("art-1", tmp_path / "ckpt.tsf")
    service.pull_artifact_to_file("art-1", tmp_path / "ckpt.tsf", overwrite=True)


@pytest.mark.parametrize(
    ("info", "response"),
    [
        (_artifact_json(), _content(digest="00" * 32)),
        (_artifact_json(), _content(BLOB[:-1] + bytes([BLOB[-1] ^ 1]))),  # always a change
        (_artifact_json(content_hash="00" * 32), _content()),  # listing disagrees with stream
        (_artifact_json(size_bytes=5), _content()),
    ],
)
def test_pull_to_file_leaves_no_file_on_mismatch(service, api, tmp_path, info, response):
    api.on("GET", r"/v1/artifacts/art-1", httpx.Response(200, json=info))
    api.on("GET", CONTENT, response)
    with pytest.raises(ArtifactIntegrityError):
        service.pull_artifact_to_file("art-1", tmp_path / "ckpt.tsf")
    assert os.listdir(tmp_path) == []


def _breaking_stream(fail_times: list[int]):
    """Content that breaks mid-body on the first ``fail_times[0]`` requests."""

    def handler(request, match):
        broken = fail_times[0] > 0
        fail_times[0] -= 1

        def body():
            yield BLOB[: 1 << 20]
            if broken:
                raise httpx.ReadError("connection reset mid-body")
            yield BLOB[1 << 20 :]

        headers = {"Content-Length": str(len(BLOB)), "X-Content-SHA256": BLOB_HASH}
        return httpx.Response(200, content=body(), headers=headers)

    return handler


def test_pull_to_file_restarts_a_download_that_broke_off(service, api, tmp_path, sleeps):
    api.on("GET", r"/v1/artifacts/art-1", httpx.Response(200, json=_artifact_json()))
    api.on("GET", CONTENT, _breaking_stream([1]))
    out = service.pull_artifact_to_file("art-1", tmp_path / "ckpt.tsf")
    assert out.path.read_bytes() == BLOB
    assert len(api.sent("GET", CONTENT)) == 2 and len(sleeps) == 1


def test_pull_to_file_that_keeps_breaking_leaves_nothing(service, api, tmp_path):
    api.on("GET", r"/v1/artifacts/art-1", httpx.Response(200, json=_artifact_json()))
    api.on("GET", CONTENT, _breaking_stream([99]))
    with pytest.raises(APIConnectionError):
        service.pull_artifact_to_file("art-1", tmp_path / "ckpt.tsf")
    assert os.listdir(tmp_path) == []


def test_pull_to_file_interrupted_by_the_user_leaves_nothing(service, api, tmp_path):
    api.on("GET", r"/v1/artifacts/art-1", httpx.Response(200, json=_artifact_json()))

    def interrupted(request, match):
        def body():
            yield BLOB[:100]
            raise KeyboardInterrupt

        return httpx.Response(200, content=body(), headers={"X-Content-SHA256": BLOB_HASH})

    api.on("GET", CONTENT, interrupted)
    with pytest.raises(KeyboardInterrupt):
        service.pull_artifact_to_file("art-1", tmp_path / "ckpt.tsf")
    assert os.listdir(tmp_path) == []


def test_async_pulls(service, api, tmp_path):
    api.on("GET", r"/v1/artifacts/art-1", httpx.Response(200, json=_artifact_json()))
    api.on("GET", CONTENT, _content())

    async def main():
        data = await service.pull_artifact_async("art-1")
        pulled = await service.pull_artifact_to_file_async("art-1", tmp_path / "a.tsf")
        return data, pulled

    data, pulled = asyncio.run(main())
    assert data == BLOB and pulled.path.read_bytes() == BLOB


def test_async_pull_mismatch_leaves_nothing(service, api, tmp_path):
    api.on("GET", r"/v1/artifacts/art-1", httpx.Response(200, json=_artifact_json()))
    api.on("GET", CONTENT, _content(digest="00" * 32))
    with pytest.raises(ArtifactIntegrityError):
        asyncio.run(service.pull_artifact_to_file_async("art-1", tmp_path / "a.tsf"))
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ keys
KEY_FILE = json.dumps({"tenant_id": "t1", "key_id": "k1", "version": 1, "key": "c2VjcmV0"}).encode()


def test_export_tenant_key_writes_the_file_with_mode_0600(service, api, tmp_path):
    api.on("GET", r"/v1/keys/export", httpx.Response(200, content=KEY_FILE))
    path = service.export_tenant_key(tmp_path / "tenant.key.json")
    assert path.read_bytes() == KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        service.export_tenant_key(path)
    assert path.read_bytes() == KEY_FILE
    service.export_tenant_key(path, overwrite=True)
    assert os.listdir(tmp_path) == ["tenant.key.json"]


def test_export_tenant_key_refuses_a_non_json_answer(service, api, tmp_path):
    api.on("GET", r"/v1/keys/export", httpx.Response(200, content=b"<html>login</html>"))
    with pytest.raises(Exception, match="not a JSON key file"):
        service.export_tenant_key(tmp_path / "k.json")
    assert os.listdir(tmp_path) == []


def test_export_tenant_key_async(service, api, tmp_path):
    api.on("GET", r"/v1/keys/export", httpx.Response(200, content=KEY_FILE))
    path = asyncio.run(service.export_tenant_key_async(tmp_path / "k.json"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_fake_api_rejects_unknown_routes():
    # Guard for the test double itself: an unrouted request is a 404, never a success.
    assert FakeAPI()(httpx.Request("GET", f"{BASE_URL}/nope")).status_code == 404
