"""The official ``tinker==0.38.0`` client, unmodified, against a live TenSafe server
(``/api/v1``, SQLite and PostgreSQL) on the tiny model: a DP training loop, forward and RL losses,
forward_backward_custom, checkpoints (save, load, create-from-state), sampler weights,
RestClient, isolation between tenants, and refusals the client surfaces clearly."""

from __future__ import annotations

import contextlib
import io
import json
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tinker
import torch
from tg_tinker import NotFoundError, PermissionDeniedError, ServiceClient
from tinker import types as tt

from tensafe.artifacts import decrypt_to_directory, read_key_file
from tensafe.models.smollm2 import prepare_smollm2_tokenizer
from tests.integration.conftest import LiveServer
from tests.integration.test_privacy_budget import cap_for, ledger
from tests.server.databases import postgres_available, postgres_database

pytestmark = pytest.mark.integration

DP = {
    "tensafe.dp.noise_multiplier": "1.0",
    "tensafe.dp.dataset_size": "1000",
    "tensafe.dp.expected_batch_size": "4",
    "tensafe.dp.max_grad_norm": "1.0",
}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp(f"tinker-{request.param}")
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{data_dir / 'tensafe.db'}"
        else:  # a database of its own: its keys are wrapped by this server's KEK
            reason = postgres_available()
            if reason:
                pytest.skip(reason)
            url = stack.enter_context(postgres_database())
        yield from _serve(data_dir, url)


def _serve(data_dir: Path, url: str) -> Iterator[LiveServer]:
    live = LiveServer(
        data_dir,
        url,
        extra_env={
            "TENSAFE_TINKER_TOKENIZER_ID": str(prepare_smollm2_tokenizer()),
            # batches of more than 3 datums are sent as chunks (several submissions)
            "TENSAFE_TINKER_FWDBWD_MAX_CHUNK_LEN": "3",
        },
    )
    live.start()
    yield live
    live.stop()


def _client(server: LiveServer, key: str, **metadata: str) -> tinker.ServiceClient:
    return tinker.ServiceClient(
        user_metadata={**DP, **metadata}, base_url=server.url, api_key="tml-" + key
    )


def _submissions(server: LiveServer, route: str) -> int:
    """How many ``POST /api/v1/<route>`` the server has logged."""
    path = f'"path": "/api/v1/{route}"'
    return sum(path in line for line in server.log_path.read_text().splitlines())


def _datum(seed: int, length: int = 12, **extra: np.ndarray) -> tt.Datum:
    tokens = np.random.default_rng(seed).integers(10, 49000, size=length + 1)
    return tt.Datum(
        model_input=tt.ModelInput.from_ints(tokens[:-1].tolist()),
        loss_fn_inputs={
            "target_tokens": tokens[1:].astype(np.int64),
            "weights": np.ones(length, dtype=np.float32),
            **extra,
        },
    )


def test_sl_loop_with_dp_checkpoints_and_rest_client(server: LiveServer, tmp_path: Path) -> None:
    tenant = server.create_tenant()
    service = _client(server, tenant["api_key"])
    tc = service.create_lora_training_client(base_model="tiny-llama", rank=4).result(timeout=120)
    info = tc.get_info()
    assert info.model_id.endswith(":train:0") and info.model_data.model_name == "tiny-llama"
    assert info.is_lora and info.lora_rank == 4
    tokenizer = tc.get_tokenizer()
    assert len(tokenizer.encode("hello world")) > 0

    batch = [_datum(i) for i in range(4)]
    sent = _submissions(server, "forward_backward")
    forward = tc.forward(batch, "cross_entropy").result(timeout=120)
    assert _submissions(server, "forward_backward") - sent == 2  # chunks of 3 + 1 datums
    assert len(forward.loss_fn_outputs) == 4
    assert forward.loss_fn_outputs[0]["logprobs"].shape == [12]
    losses = []
    for step in range(2):
        fb = tc.forward_backward(batch, "cross_entropy").result(timeout=120)
        # Tinker's convention: the sum of the weighted token losses, not a mean
        logprob_sum = sum(float(o["logprobs"].to_numpy().sum()) for o in fb.loss_fn_outputs)
        assert fb.metrics["loss:sum"] == pytest.approx(-logprob_sum, rel=1e-4)
        losses.append(fb.metrics["loss:sum"])
        result = tc.optim_step(tt.AdamParams(learning_rate=1e-2)).result(timeout=120)
        assert result.metrics is not None
        assert result.metrics["step:max"] == step + 1
        assert result.metrics["dp/epsilon:max"] > 0 and result.metrics["dp/delta:max"] > 0
    assert losses[0] != losses[1]  # the weights moved

    saved = tc.save_state("first").result(timeout=120)
    assert saved.path == f"tinker://{info.model_id}/weights/first"
    sampler = tc.save_weights_for_sampler("first-sampler").result(timeout=120)
    assert sampler.path == f"tinker://{info.model_id}/sampler_weights/first-sampler"

    # weights only (deprecated load_state), then with the optimizer
    tc.load_state(saved.path).result(timeout=120)
    tc.load_state_with_optimizer(saved.path).result(timeout=120)
    again = tc.forward(batch, "cross_entropy").result(timeout=120)
    assert again.metrics["loss:sum"] == pytest.approx(
        tc.forward(batch, "cross_entropy").result(timeout=120).metrics["loss:sum"], rel=1e-6
    )

    resumed = service.create_training_client_from_state_with_optimizer(saved.path).result(
        timeout=120
    )
    resumed_info = resumed.get_info()
    assert resumed_info.model_id.endswith(":train:1") and resumed_info.lora_rank == 4
    same = resumed.forward(batch, "cross_entropy").result(timeout=120)
    assert same.metrics["loss:sum"] == pytest.approx(again.metrics["loss:sum"], rel=1e-5)
    # the checkpoint's two noisy steps count against the new run's ε too
    resumed.forward_backward([_datum(50)], "cross_entropy").result(timeout=120)
    carried = resumed.optim_step(tt.AdamParams(learning_rate=1e-3)).result(timeout=120)
    assert carried.metrics is not None and carried.metrics["dp/steps:max"] == 3
    with pytest.raises(tinker.BadRequestError, match="already has a checkpoint named"):
        tc.save_state("first").result(timeout=60)  # refused at once, not retried
    weights_only = service.create_training_client_from_state(saved.path).result(timeout=120)
    assert weights_only.get_info().model_id.endswith(":train:2")

    rest = tinker.RestClient(base_url=server.url, api_key="tml-" + tenant["api_key"])
    listed = rest.list_checkpoints(info.model_id).result(timeout=60)
    ids = {c.checkpoint_id: c for c in listed.checkpoints}
    assert set(ids) == {"weights/first", "sampler_weights/first-sampler"}
    assert ids["weights/first"].tinker_path == saved.path
    assert ids["weights/first"].checkpoint_type == "training"
    assert ids["weights/first"].size_bytes and ids["weights/first"].size_bytes > 0
    run = rest.get_training_run(info.model_id).result(timeout=60)
    assert run.base_model == "tiny-llama" and run.lora_rank == 4 and run.is_lora
    assert run.last_checkpoint is not None and run.last_checkpoint.tinker_path == saved.path
    weights = rest.get_weights_info_by_tinker_path(saved.path).result(timeout=60)
    assert weights.base_model == "tiny-llama" and weights.lora_rank == 4
    runs = rest.list_training_runs().result(timeout=60)
    assert {r.training_run_id for r in runs.training_runs} >= {info.model_id}

    # the sampler checkpoint is the same encrypted artifact a native client pulls and
    # decrypts locally: a peft adapter of rank 4
    adapter = ids["sampler_weights/first-sampler"].user_metadata or {}
    with ServiceClient(server.url, api_key=tenant["api_key"]) as native:
        ciphertext = native.pull_artifact(
            adapter["tensafe.artifact_id"], expected_sha256=adapter["tensafe.content_hash"]
        )
        key = read_key_file(native.export_tenant_key(tmp_path / "tenant.key"))
    decrypted = decrypt_to_directory(
        io.BytesIO(ciphertext),
        tmp_path / "adapter",
        keys=key,
        tenant_id=key.tenant_id,
        artifact_id=adapter["tensafe.artifact_id"],
        expected_content_hash=adapter["tensafe.content_hash"],
    )
    assert decrypted.manifest.kind == "lora_adapter"
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
    service.close("success").result(timeout=60)


def test_rl_losses_and_forward_backward_custom(server: LiveServer) -> None:
    tenant = server.create_tenant()
    service = _client(server, tenant["api_key"])
    tc = service.create_lora_training_client(base_model="tiny-llama", rank=2).result(timeout=120)
    rl = {
        "logprobs": np.full(12, -9.0, dtype=np.float32),
        "advantages": np.linspace(-1, 1, 12).astype(np.float32),
    }
    # a declared logical batch holds each example once: fresh datums for every call
    for n, loss in enumerate(("importance_sampling", "ppo", "cispo", "dro")):
        batch = [_datum(10 * n + i, **rl) for i in range(3)]
        config = {"beta": 0.1} if loss == "dro" else None
        if loss in ("ppo", "cispo"):
            config = {"clip_low_threshold": 0.7, "clip_high_threshold": 1.3}
        out = tc.forward_backward(batch, loss, loss_fn_config=config).result(timeout=120)
        assert len(out.loss_fn_outputs) == 3 and "loss:sum" in out.metrics
    for refused in ("gspo", "stable_reinforce"):
        with pytest.raises(Exception, match="not implemented by this TenSafe server"):
            tc.forward_backward(batch, refused).result(timeout=60)

    plain = [_datum(100 + i) for i in range(2)]

    def neg_logprob(data: list[tt.Datum], logprobs: list[torch.Tensor]):
        # scaled far beyond C = 1: every datum's gradient must be clipped on its own
        loss = sum(-(lp * 1000.0).sum() for lp in logprobs)
        return loss, {"custom:sum": float(loss)}

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        custom = tc.forward_backward_custom(plain, neg_logprob).result(timeout=120)
    assert len(custom.loss_fn_outputs) == 2
    assert custom.metrics["custom:sum"] != 0
    assert custom.metrics["dp/per_example_grad_norm:mean"] > 1.0
    assert custom.metrics["dp/clip_fraction:mean"] == 1.0
    step = tc.optim_step(tt.AdamParams(learning_rate=1e-3)).result(timeout=120)
    assert step.metrics is not None and step.metrics["dp/epsilon:max"] > 0
    service.close("success").result(timeout=60)


def test_a_step_over_the_budget_is_a_failed_future_a_person_understands(
    server: LiveServer,
) -> None:
    tenant = server.create_tenant()
    dataset = "tinker-" + uuid.uuid4().hex[:6]
    cap = repr(cap_for(1))  # σ = 1, q = 4/1000 as in DP: room for exactly one step
    server.cli("admin", "create-budget", tenant["tenant_id"], dataset, "--epsilon-cap", cap)
    service = _client(server, tenant["api_key"], **{"tensafe.dp.dataset_id": dataset})
    tc = service.create_lora_training_client(base_model="tiny-llama", rank=2).result(timeout=120)
    tc.forward_backward([_datum(1)], "cross_entropy").result(timeout=120)
    first = tc.optim_step(tt.AdamParams(learning_rate=1e-3)).result(timeout=120)
    assert first.metrics is not None and first.metrics["step:max"] == 1
    tc.forward_backward([_datum(2)], "cross_entropy").result(timeout=120)
    with pytest.raises(tinker.RequestFailedError, match="budget exceeded") as refused:
        tc.optim_step(tt.AdamParams(learning_rate=1e-3)).result(timeout=120)
    assert refused.value.category == "user"
    # another model on the spent budget is refused at creation, not retried for minutes
    with pytest.raises(Exception, match="budget"):
        service.create_lora_training_client(base_model="tiny-llama", rank=2).result(timeout=120)
    service.close("success").result(timeout=60)


def test_the_privacy_officers_dp_policy_sets_a_tinker_models_dp(server: LiveServer) -> None:
    """The officer's policy gives the dataset, σ and C; the client names only N and q,
    may tighten σ, and is refused (naming the key) when it loosens anything."""
    tenant, other = server.create_tenant(), server.create_tenant()
    dataset = "policy-" + uuid.uuid4().hex[:6]
    policy = {"dataset_id": dataset, "noise_multiplier": 1.3, "max_grad_norm": 0.7}
    with (
        ServiceClient(server.url, api_key=tenant["privacy_officer_api_key"]) as officer,
        ServiceClient(server.url, api_key=tenant["api_key"], max_retries=0) as trainer,
        ServiceClient(server.url, api_key=other["privacy_officer_api_key"]) as others,
    ):
        officer.create_privacy_budget(dataset, epsilon_cap=100.0)
        with pytest.raises(PermissionDeniedError, match="privacy-officer"):
            trainer.set_dp_policy(**policy)  # type: ignore[arg-type]
        assert officer.set_dp_policy(**policy).noise_multiplier == 1.3  # type: ignore[arg-type]
        assert officer.get_dp_policy().dataset_id == dataset
        with pytest.raises(PermissionDeniedError):
            trainer.get_dp_policy()
        with pytest.raises(NotFoundError):
            others.get_dp_policy()

    declared = {"tensafe.dp.dataset_size": "1000", "tensafe.dp.expected_batch_size": "4"}
    service = tinker.ServiceClient(
        user_metadata=declared, base_url=server.url, api_key="tml-" + tenant["api_key"]
    )

    def one_step(tc: tinker.TrainingClient, seed: int) -> dict[str, float]:
        tc.forward_backward([_datum(seed), _datum(seed + 1)], "cross_entropy").result(timeout=120)
        step = tc.optim_step(tt.AdamParams(learning_rate=1e-3)).result(timeout=120)
        assert step.metrics is not None
        return step.metrics

    plain = service.create_lora_training_client(base_model="tiny-llama", rank=2).result(timeout=120)
    metrics = one_step(plain, 1)
    assert metrics["dp/noise_multiplier:max"] == 1.3 and metrics["dp/max_grad_norm:max"] == 0.7
    tighter = service.create_lora_training_client(
        base_model="tiny-llama", rank=2, user_metadata={"tensafe.dp.noise_multiplier": "2.5"}
    ).result(timeout=120)
    assert one_step(tighter, 10)["dp/noise_multiplier:max"] == 2.5
    steps = [r for r in ledger(server, dataset) if r["kind"] == "dp_step"]
    assert [(r["noise_multiplier"], r["max_grad_norm"], r["sample_rate"]) for r in steps] == [
        (1.3, 0.7, 0.004),
        (2.5, 0.7, 0.004),
    ]
    assert {r["tenant_id"] for r in steps} == {tenant["tenant_id"]}

    for loosened, key in (
        ({"tensafe.dp.noise_multiplier": "0.5"}, "tensafe.dp.noise_multiplier"),
        ({"tensafe.dp.max_grad_norm": "5"}, "tensafe.dp.max_grad_norm"),
        ({"tensafe.dp.dataset_id": "elsewhere"}, "tensafe.dp.dataset_id"),
        ({"tensafe.dp": "off"}, "tensafe.dp"),
    ):
        with pytest.raises(tinker.APIStatusError, match="privacy officer") as refused:
            service.create_lora_training_client(
                base_model="tiny-llama", rank=2, user_metadata=loosened
            ).result(timeout=60)
        assert refused.value.status_code == 422
        assert refused.value.body["field"] == f"user_metadata.{key}"  # type: ignore[index]
    with pytest.raises(tinker.APIStatusError, match=r"tensafe\.dp\.max_grad_norm"):
        loose = tinker.ServiceClient(  # the session is refused: its keys loosen C
            user_metadata={**declared, "tensafe.dp.max_grad_norm": "5"},
            base_url=server.url,
            api_key="tml-" + tenant["api_key"],
        )
        loose.create_lora_training_client(base_model="tiny-llama", rank=2).result(timeout=60)
    service.close("success").result(timeout=60)


def test_sampling_after_training(server: LiveServer) -> None:
    tenant, other = server.create_tenant(), server.create_tenant()
    service = _client(server, tenant["api_key"])
    tc = service.create_lora_training_client(base_model="tiny-llama", rank=2).result(timeout=120)
    tc.forward_backward([_datum(1), _datum(2)], "cross_entropy").result(timeout=120)
    tc.optim_step(tt.AdamParams(learning_rate=1e-2)).result(timeout=120)

    sampler = tc.save_weights_and_get_sampling_client().result(timeout=120)
    prompt = tt.ModelInput.from_ints([5, 6, 7, 8])
    params = tt.SamplingParams(max_tokens=4, temperature=1.0, seed=3)
    out = sampler.sample(prompt, num_samples=2, sampling_params=params).result(timeout=120)
    assert len(out.sequences) == 2
    assert all(len(s.tokens) == 4 and s.stop_reason == "length" for s in out.sequences)
    assert all(s.logprobs is not None and len(s.logprobs) == 4 for s in out.sequences)
    assert len({s.sequence_id for s in out.sequences}) == 2  # the client's ids, one per sample
    logprobs = sampler.compute_logprobs(prompt).result(timeout=120)
    assert len(logprobs) == 4 and logprobs[0] is None
    assert all(lp is not None and lp < 0 for lp in logprobs[1:])

    # a named sampler checkpoint, sampled by path: the same logprobs as the snapshot
    # taken at the same step
    named = tc.save_weights_for_sampler("after-one-step").result(timeout=120)
    by_path = service.create_sampling_client(model_path=named.path).result(timeout=120)
    assert by_path.compute_logprobs(prompt).result(timeout=120) == pytest.approx(logprobs)
    with httpx.Client(base_url=server.url + "/api/v1") as http:
        intruder = {"X-API-Key": "tml-" + other["api_key"]}
        session = http.post(
            "/create_session",
            json={"tags": [], "sdk_version": "0.38.0", "user_metadata": {}},
            headers=intruder,
        ).json()["session_id"]
        stolen = http.post(
            "/create_sampling_session",
            json={"session_id": session, "sampling_session_seq_id": 0, "model_path": named.path},
            headers=intruder,
        )
        assert stolen.status_code == 404
    service.close("success").result(timeout=60)


def _retrieve(http: httpx.Client, headers: dict[str, str], request_id: str) -> dict[str, Any]:
    while True:
        answer = http.post("/retrieve_future", json={"request_id": request_id}, headers=headers)
        if answer.status_code != 408:
            assert answer.status_code == 200, answer.text
            return dict(answer.json())


def test_a_run_on_a_server_held_dataset_names_the_drawn_records(server: LiveServer) -> None:
    tenant = server.create_tenant()
    records = [([5, 6, 7, 8], [9, 10]), ([11, 12, 13], [14, 15, 16])] * 8
    with ServiceClient(server.url, api_key=tenant["api_key"]) as native:
        dataset = native.create_dataset("tinker-notes", records, progress=False)
    metadata = {
        "tensafe.dp.dataset_id": dataset.dataset_id,
        "tensafe.dp.noise_multiplier": "1.0",
        "tensafe.dp.sample_rate": "0.5",
    }
    service = tinker.ServiceClient(
        user_metadata=metadata, base_url=server.url, api_key="tml-" + tenant["api_key"]
    )
    tc = service.create_lora_training_client(base_model="tiny-llama", rank=2).result(timeout=120)
    model_id = tc.get_info().model_id
    headers = {"X-API-Key": "tml-" + tenant["api_key"]}
    with httpx.Client(base_url=server.url + "/api/v1", timeout=60) as http:
        submitted = http.post(
            "/tensafe/draw_batch", json={"model_id": model_id}, headers=headers
        ).json()
        drawn = _retrieve(http, headers, submitted["request_id"])
    assert drawn["size"] == len(drawn["record_ids"]) > 0
    batch = [
        tt.Datum(
            model_input=tt.ModelInput.from_ints(record["tokens"]),
            loss_fn_inputs={
                "target_tokens": np.asarray(record["fields"]["target_tokens"], dtype=np.int64),
                "weights": np.asarray(record["fields"]["weights"], dtype=np.float32),
                "tensafe_record_id": np.full(len(record["tokens"]), rid, dtype=np.int64),
            },
        )
        for rid, record in zip(drawn["record_ids"], drawn["records"], strict=True)
    ]
    # a record that was not drawn for this step is refused (nothing is accumulated)
    tokens = drawn["records"][0]["tokens"]
    stray = tt.Datum(
        model_input=tt.ModelInput.from_ints(tokens),
        loss_fn_inputs={
            "target_tokens": np.asarray(drawn["records"][0]["fields"]["target_tokens"]),
            "tensafe_record_id": np.full(len(tokens), 10_000, dtype=np.int64),
        },
    )
    with pytest.raises(tinker.RequestFailedError, match="10000") as refused:
        tc.forward_backward([stray], "cross_entropy").result(timeout=120)
    assert refused.value.category == "user"
    tc.forward_backward(batch, "cross_entropy").result(timeout=120)
    step = tc.optim_step(tt.AdamParams(learning_rate=1e-3)).result(timeout=120)
    assert step.metrics is not None and step.metrics["dp/sample_rate:max"] == 0.5
    service.close("success").result(timeout=60)


def test_isolation_between_tenants(server: LiveServer) -> None:
    owner, other = server.create_tenant(), server.create_tenant()
    service = _client(server, owner["api_key"])
    tc = service.create_lora_training_client(base_model="tiny-llama", rank=2).result(timeout=120)
    model_id = tc.get_info().model_id
    saved = tc.save_state("mine").result(timeout=120)
    with httpx.Client(base_url=server.url + "/api/v1") as http:
        headers = {"X-API-Key": "tml-" + other["api_key"]}
        assert (
            http.post("/get_info", json={"model_id": model_id}, headers=headers).status_code == 404
        )
        assert http.get(f"/training_runs/{model_id}", headers=headers).status_code == 404
        listed = http.get(f"/training_runs/{model_id}/checkpoints", headers=headers)
        assert listed.status_code == 404
        info = http.post("/weights_info", json={"tinker_path": saved.path}, headers=headers)
        assert info.status_code == 404
        steal = {
            "model_id": model_id,
            "seq_id": 99,
            "adam_params": {"learning_rate": 1e-3},
            "type": "optim_step",
        }
        assert http.post("/optim_step", json=steal, headers=headers).status_code == 404
        others_runs = http.get("/training_runs", headers=headers).json()
        assert others_runs["training_runs"] == []
        session_id = model_id.split(":train:")[0]
        beat = {"session_id": session_id, "type": "session_heartbeat"}
        assert http.post("/session_heartbeat", json=beat, headers=headers).status_code == 404
        mine = {"X-API-Key": "tml-" + owner["api_key"]}
        assert http.post("/session_heartbeat", json=beat, headers=mine).status_code == 200
    intruder = _client(server, other["api_key"])
    with pytest.raises(Exception):  # noqa: B017 - the client wraps the 404 in its own type
        intruder.create_training_client_from_state(saved.path).result(timeout=60)
    service.close("success").result(timeout=60)
    intruder.close("success").result(timeout=60)


def test_refusals_are_clear_and_never_500(server: LiveServer, tmp_path: Path) -> None:
    tenant = server.create_tenant()
    headers = {"X-API-Key": "tml-" + tenant["api_key"]}
    with httpx.Client(base_url=server.url + "/api/v1", timeout=60) as http:
        assert http.post("/client/config", json={"sdk_version": "0.38.0"}).status_code == 200
        unauth = http.post("/create_session", json={"tags": [], "sdk_version": "x"})
        assert unauth.status_code == 401
        no_dp = http.post(
            "/create_session",
            json={"tags": [], "sdk_version": "0.38.0", "user_metadata": {}},
            headers=headers,
        )
        session_id = no_dp.json()["session_id"]
        create = {
            "session_id": session_id,
            "model_seq_id": 0,
            "base_model": "tiny-llama",
            "lora_config": {"rank": 2},
            "type": "create_model",
        }
        missing_dp = http.post("/create_model", json=create, headers=headers)
        assert missing_dp.status_code == 422 and "tensafe.dp" in missing_dp.json()["detail"]
        bad_dp = http.post(
            "/create_session",
            json={
                "tags": [],
                "sdk_version": "0.38.0",
                "user_metadata": {"tensafe.dp.noise_multiplier": "loud"},
            },
            headers=headers,
        )
        assert bad_dp.status_code == 422
        assert bad_dp.json()["field"] == "user_metadata.tensafe.dp.noise_multiplier"

        unknown = http.post(
            "/forward_backward",
            content=tt.ForwardBackwardRequest.__name__.encode(),
            headers={**headers, "Content-Type": "application/x-protobuf"},
        )
        assert unknown.status_code == 422 and unknown.json()["field"] == "body"
        as_json = http.post("/forward_backward", json={"model_id": "x"}, headers=headers)
        assert as_json.status_code == 422 and as_json.json()["field"] == "Content-Type"
        bad_zstd = http.post(
            "/forward_backward",
            content=b"\x28\xb5\x2f\xfdgarbage",
            headers={
                **headers,
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "zstd",
            },
        )
        assert bad_zstd.status_code == 422
        ghost = http.post("/get_info", json={"model_id": "nope:train:0"}, headers=headers)
        assert ghost.status_code == 404
        future = http.post("/retrieve_future", json={"request_id": "fut_nope"}, headers=headers)
        assert future.status_code == 404
        export = http.post("/save_weights_external", json={"model_id": "m"}, headers=headers)
        assert export.status_code == 400 and "encrypted" in export.json()["detail"]
        telemetry = http.post("/telemetry", json={"events": []}, headers=headers)
        assert telemetry.json() == {"status": "accepted"}
        finished = http.post(
            f"/sessions/{session_id}/finish", json={"reason": {"type": "success"}}, headers=headers
        )
        assert finished.status_code == 200
        create["user_metadata"] = {"tensafe.dp.noise_multiplier": "1", **DP}
        closed = http.post("/create_model", json=create, headers=headers)
        assert closed.status_code == 400 and "closed" in closed.json()["detail"]
