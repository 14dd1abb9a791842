"""Capacity admission: requests that would exhaust the worker are refused up front, with
a clear 422/409, before anything is stored or allocated."""

from __future__ import annotations

import resource
import time
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tg_tinker.types import TrainingConfig

from server.app import create_app
from server.context import build_context
from server.db.models import OperationRow, TrainingRunRow
from server.services.capacity import (
    SMOLLM2_SHAPE,
    CapacityError,
    check_model_ref,
    check_run_capacity,
    estimate_operation_bytes,
    max_tokens_per_call,
    model_shape,
)
from server.services.drawn_batches import split_by_group
from server.settings import Settings
from tensafe.losses import Datum

from .harness import Harness, run_config

GiB = 1024**3


@pytest.fixture
def small_server(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    """A server with a 2 GiB worker budget and the default token cap."""
    settings = make_settings(
        worker_memory_bytes=2 * GiB, default_epsilon_cap=1000.0, max_body_bytes=4 * 1024 * 1024
    )
    context = build_context(settings)
    with TestClient(create_app(settings, context=context)) as client:
        yield Harness(client, context)


def _counts(api: Harness) -> tuple[int, int]:
    with api.context.db.sessions() as session:
        runs = session.scalar(select(func.count()).select_from(TrainingRunRow)) or 0
        ops = session.scalar(select(func.count()).select_from(OperationRow)) or 0
    return int(runs), int(ops)


def test_a_huge_lora_rank_is_refused_before_the_run_exists(small_server: Harness) -> None:
    api = small_server
    headers = api.tenant()
    before = _counts(api)
    response = api.client.post(
        "/v1/training_runs", json=run_config(lora_config={"rank": 1_000_000}), headers=headers
    )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "lora_config.rank"
    assert "at most 256" in response.json()["detail"]
    assert _counts(api) == before


def test_a_run_too_big_for_the_worker_is_409_with_the_estimate(small_server: Harness) -> None:
    api = small_server
    headers = api.tenant()
    before = _counts(api)
    # SmolLM2 with rank 256 and 256 per-example gradients: far above 2 GiB
    config = run_config(model_ref="smollm2-135m-instruct", lora_config={"rank": 256})
    config["batch_size"] = 256
    response = api.client.post("/v1/training_runs", json=config, headers=headers)
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "CapacityError" and body["field"] == "lora_config.rank"
    assert "GiB" in body["detail"] and "2.00 GiB" in body["detail"]
    assert _counts(api) == before


def test_a_memory_bomb_batch_is_refused_before_allocation(small_server: Harness) -> None:
    """4 × 4096 tokens of a 49k-vocabulary model need ~9 GiB of logits: refused at
    submission, in milliseconds, with nothing queued and nothing allocated."""
    api = small_server
    headers = api.tenant()
    run_id = api.create_run(headers)
    api.wait(headers, api.submit(headers, run_id, "forward", _rows(1, 8)))  # model loaded
    runs, ops = _counts(api)
    body = _rows(4, 4096)
    peak_rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    started = time.perf_counter()
    response = api.client.post(f"/v1/training_runs/{run_id}/forward", json=body, headers=headers)
    elapsed = time.perf_counter() - started
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert response.status_code == 409, response.text
    assert response.json()["error"] == "CapacityError"
    assert response.json()["field"] == "batch"
    assert "16384 tokens" in response.json()["detail"]
    assert _counts(api) == (runs, ops)  # nothing stored, nothing queued
    # parsing the 100 KB request is all it cost: no B×T×V tensor was ever built (the
    # process's high-water mark would have grown by gigabytes)
    assert peak < 64 * 1024 * 1024
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_rss_before
    assert grown_kib < 512 * 1024
    assert elapsed < 5


def test_more_tokens_than_the_cap_is_a_422_naming_the_limit(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        max_tokens_per_batch=1000, max_batch_size=64, max_seq_len=512, default_epsilon_cap=10.0
    )
    context = build_context(settings)
    with TestClient(create_app(settings, context=context)) as client:
        api = Harness(client, context)
        headers = api.tenant()
        run_id = api.create_run(headers)
        response = client.post(
            f"/v1/training_runs/{run_id}/forward_backward", json=_rows(4, 300), headers=headers
        )
    assert response.status_code == 422, response.text
    assert response.json()["field"] == "batch"
    assert "1200 tokens" in response.json()["detail"] and "1000" in response.json()["detail"]


def _rows(rows: int, length: int) -> dict[str, object]:
    ids = [[(i * 31 + j) % 1000 for j in range(length)] for i in range(rows)]
    return {"batch": {"input_ids": ids, "labels": ids}}


@pytest.mark.parametrize(
    ("metadata_bytes", "status"),
    [(70 * 1024, 422), (300 * 1024, 413)],  # above the cap; above the route's body limit
)
def test_run_metadata_is_bounded(small_server: Harness, metadata_bytes: int, status: int) -> None:
    api = small_server
    headers = api.tenant()
    config = run_config(metadata={"blob": "x" * metadata_bytes})
    response = api.client.post("/v1/training_runs", json=config, headers=headers)
    assert response.status_code == status, response.text
    assert response.json()["field"] in ("metadata", "body")


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = {"environment": "production", "data_dir": "/nonexistent"}
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "ref", ["tiny-llama", "acme/some-model", "gpt2", "tests", "server", "no-such-directory"]
)
def test_production_serves_only_the_operators_models(ref: str) -> None:
    """The same refusal whether or not ``ref`` exists as a directory beside the server
    (``tests`` and ``server`` do, here): a name is never checked against the disk."""
    with pytest.raises(Exception) as info:
        check_model_ref(ref, settings=_settings())
    assert info.value.field == "model_ref"  # type: ignore[attr-defined]
    assert str(info.value.detail) == (  # type: ignore[attr-defined]
        "this server does not serve that model; it serves: 'smollm2-135m-instruct'"
    )


def test_served_and_enabled_models_pass() -> None:
    check_model_ref("smollm2-135m-instruct", settings=_settings())
    check_model_ref("HuggingFaceTB/SmolLM2-135M-Instruct", settings=_settings())
    check_model_ref("tiny-llama:layers=3", settings=_settings(allow_test_models=True))
    check_model_ref("acme/model", settings=_settings(served_models=("acme/model",)))
    check_model_ref("anything", settings=_settings(environment="development"))


@pytest.mark.parametrize(
    "ref",
    ["tiny-llama:hidden=100000", "tiny-llama:layers=500", "tiny-llama:max_positions=1000000000"],
)
def test_tiny_llama_sizes_are_bounded_everywhere(ref: str) -> None:
    with pytest.raises(Exception) as info:
        check_model_ref(ref, settings=_settings(environment="development"))
    assert info.value.field == "model_ref"  # type: ignore[attr-defined]


def test_the_memory_estimates() -> None:
    # 4 × 4096 tokens of SmolLM2: the logits alone, three copies, are ~9 GiB
    assert estimate_operation_bytes(tokens=16384, shape=SMOLLM2_SHAPE) > 9 * GiB
    assert estimate_operation_bytes(tokens=512, shape=SMOLLM2_SHAPE) < 0.5 * GiB
    tiny = model_shape("tiny-llama")
    assert tiny is not None and tiny.hidden == 64 and tiny.vocab == 49_152
    assert model_shape("acme/unknown") is None
    config = TrainingConfig.model_validate(
        run_config(model_ref="smollm2-135m-instruct", lora_config={"rank": 16})
    )
    check_run_capacity(config, settings=_settings(worker_memory_bytes=4 * GiB))
    with pytest.raises(CapacityError):
        check_run_capacity(config, settings=_settings(worker_memory_bytes=GiB // 4))


def test_a_drawn_batch_is_split_to_fit_never_refused() -> None:
    """The server builds drawn batches itself: they are cut into engine calls that fit
    the token budget, each privacy unit whole in one call."""
    datums = [Datum(tokens=[1] * n, loss_fn_inputs={"target_tokens": [1] * n}) for n in
              (300, 300, 300, 500, 100)]  # fmt: skip
    groups = [0, 1, 1, 2, 3]  # unit 1 has two records
    calls = split_by_group(datums, groups, max_batch=8, max_tokens=700)
    assert [len(part) for part, _ in calls] == [1, 2, 2]
    assert [sum(len(d.tokens) for d in part) for part, _ in calls] == [300, 600, 600]
    assert [g for _, part_groups in calls for g in part_groups] == groups
    with pytest.raises(Exception) as info:  # one unit alone above the budget
        split_by_group(datums, groups, max_batch=8, max_tokens=500)
    assert info.value.field == "dp_config.max_records_per_unit"  # type: ignore[attr-defined]


def test_the_token_budget_per_call_follows_the_memory_budget() -> None:
    roomy = _settings(worker_memory_bytes=64 * GiB)
    assert (
        max_tokens_per_call(model_ref="smollm2-135m-instruct", vocab_size=None, settings=roomy)
        == 16384
    )
    tight = _settings(worker_memory_bytes=GiB)
    fits = max_tokens_per_call(model_ref="smollm2-135m-instruct", vocab_size=None, settings=tight)
    assert 100 < fits < 16384
    assert estimate_operation_bytes(tokens=fits, shape=SMOLLM2_SHAPE) <= GiB
    assert estimate_operation_bytes(tokens=fits + 1, shape=SMOLLM2_SHAPE) > GiB
    assert max_tokens_per_call(model_ref="acme/x", vocab_size=None, settings=tight) == 16384
