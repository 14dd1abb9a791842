"""Runs on a server-held dataset: the server draws every logical batch, and the client
cannot choose, repeat or add records (the hostile probes of issue #12, over the API)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.harness import Harness
from tests.server.test_datasets import records, register

RATE = 0.3


def server_run(api: Harness, headers: dict[str, str], dataset_id: str, **dp: Any) -> str:
    config = {"noise_multiplier": 1.0, "sample_rate": RATE, "dataset_id": dataset_id, **dp}
    return api.create_run(headers, dp_config=config)


@pytest.fixture
def dataset(api: Harness) -> tuple[dict[str, str], str]:
    headers = api.tenant()
    info = register(api, headers, "sft", [records(20)])
    return headers, info["dataset_id"]


def test_the_run_takes_n_from_the_dataset(api: Harness, dataset: tuple[dict, str]) -> None:
    headers, dataset_id = dataset
    run_id = server_run(api, headers, dataset_id)
    dp = api.run(headers, run_id)["config"]["dp_config"]
    assert (dp["dataset_size"], dp["sampling"]) == (20, "server")
    bad = {"noise_multiplier": 1.0, "sample_rate": RATE, "dataset_id": dataset_id,
           "dataset_size": 100_000}  # fmt: skip
    answer = api.client.post("/v1/training_runs", json={"model_ref": "tiny-llama",
                             "dp_config": bad}, headers=headers)  # fmt: skip
    assert answer.status_code == 422 and answer.json()["field"] == "dp_config.dataset_size"
    other = api.tenant()
    answer = api.client.post(
        "/v1/training_runs",
        json={
            "model_ref": "tiny-llama",
            "dp_config": {"noise_multiplier": 1.0, "sample_rate": RATE, "dataset_id": dataset_id},
        },
        headers=other,
    )
    assert answer.status_code == 404 and answer.json()["field"] == "dp_config.dataset_id"


def test_draw_train_step_and_the_refusals(api: Harness, dataset: tuple[dict, str]) -> None:
    headers, dataset_id = dataset
    run_id = server_run(api, headers, dataset_id)
    refused = api.fail(headers, run_id, "optim_step", {})
    assert refused["field"] == "drawn_batch_id"  # no step without a drawn batch
    drawn = api.call(headers, run_id, "draw_batch", {})
    ids = drawn["record_ids"]
    assert drawn["size"] == len(ids) and ids == sorted(set(ids)) and all(0 <= i < 20 for i in ids)
    assert drawn["records"] is None
    again = api.fail(headers, run_id, "draw_batch", {})  # no redrawing until stepped
    assert again["error"] == "ConflictError" and "not been consumed" in again["detail"]
    own = {"batch": {"input_ids": [[1, 2, 3]], "labels": [[2, 3, 4]]}}
    assert api.fail(headers, run_id, "forward_backward", own)["field"] == "batch"
    other_batch = {"drawn_batch_id": "batch_0000"}
    assert api.fail(headers, run_id, "forward_backward", other_batch)["field"] == "drawn_batch_id"
    out = api.call(headers, run_id, "forward_backward", {"drawn_batch_id": drawn["batch_id"]})
    assert out["metrics"]["num_examples:sum"] == len(ids)
    if ids:  # the same drawn records cannot be used twice
        repeat = api.fail(headers, run_id, "forward_backward",
                          {"drawn_batch_id": drawn["batch_id"]})  # fmt: skip
        assert repeat["error"] == "ConflictError"
    step = api.call(headers, run_id, "optim_step", {})
    assert step["step"] == 1 and step["dp_metrics"]["sample_rate"] == pytest.approx(RATE)
    assert step["dp_metrics"]["steps"] == 1
    assert api.fail(headers, run_id, "optim_step", {})["field"] == "drawn_batch_id"
    assert api.call(headers, run_id, "draw_batch", {})["batch_id"] != drawn["batch_id"]


def test_client_built_datums_must_name_drawn_records(
    api: Harness, dataset: tuple[dict, str]
) -> None:
    headers, _ = dataset
    dataset_id = register(api, headers, "rl", [records(10)])["dataset_id"]
    run_id = server_run(api, headers, dataset_id, sample_rate=1.0)  # all 10 records
    drawn = api.call(headers, run_id, "draw_batch", {"include_records": True})
    ids, prompts = drawn["record_ids"], drawn["records"]
    assert ids == list(range(10)) and len(prompts) == 10
    assert prompts[3]["tokens"] == records(10)[3]["tokens"]
    undrawn = 10  # a record the client would add

    def datum(tokens: list[int], record_id: int | None) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model_input": {"chunks": [{"tokens": tokens}]},
            "loss_fn_inputs": {"target_tokens": {"data": tokens, "dtype": "int64",
                                                 "shape": [len(tokens)]}},
        }  # fmt: skip
        if record_id is not None:
            body["record_id"] = record_id
        return body

    missing = {"data": [datum([5, 6], None)]}
    assert api.fail(headers, run_id, "forward_backward", missing)["field"] == "data[0].record_id"
    added = {"data": [datum([5, 6], ids[0]), datum([7, 8], undrawn)]}
    answer = api.fail(headers, run_id, "forward_backward", added)
    assert answer["field"] == "data[1].record_id" and "not drawn" in answer["detail"]
    first = {"data": [datum(prompts[0]["tokens"], ids[0])]}
    assert api.call(headers, run_id, "forward_backward", first)["metrics"]["num_examples:sum"] == 1
    assert api.fail(headers, run_id, "forward_backward", first)["error"] == "ConflictError"
    rest = {"data": [datum(p["tokens"], i) for i, p in zip(ids[1:], prompts[1:], strict=True)]}
    assert api.call(headers, run_id, "forward_backward", rest)["metrics"]["num_examples:sum"] == (
        len(ids) - 1
    )
    assert api.call(headers, run_id, "optim_step", {})["step"] == 1


def test_a_client_declared_run_has_no_draws(api: Harness) -> None:
    headers = api.tenant()
    run_id = api.create_run(headers)
    assert api.run(headers, run_id)["config"]["dp_config"]["sampling"] == "client"
    answer = api.client.post(f"/v1/training_runs/{run_id}/draw_batch", json={}, headers=headers)
    assert answer.status_code == 409 and "client-declared" in answer.json()["detail"]


def test_an_empty_draw_still_steps(api: Harness) -> None:
    headers = api.tenant()
    info = register(api, headers, "tiny", [records(1)])
    run_id = server_run(api, headers, info["dataset_id"], sample_rate=1e-6)
    drawn = api.call(headers, run_id, "draw_batch", {})
    assert drawn["size"] == 0
    out = api.call(headers, run_id, "forward_backward", {"drawn_batch_id": drawn["batch_id"]})
    assert out["metrics"]["num_examples:sum"] == 0
    step = api.call(headers, run_id, "optim_step", {})
    assert step["step"] == 1 and step["dp_metrics"]["steps"] == 1


def test_the_ledger_manifest_and_report_say_who_drew_the_batches(
    api: Harness, dataset: tuple[dict, str]
) -> None:
    from sqlalchemy import select

    from server.db.models import ArtifactRow, LedgerEventRow
    from server.services.artifacts import open_from_store

    headers, dataset_id = dataset
    run_id = server_run(api, headers, dataset_id)
    api.call(headers, run_id, "draw_batch", {})
    api.call(headers, run_id, "optim_step", {})
    saved = api.call(headers, run_id, "save_state", {"name": "labelled"})
    declared = api.create_run(headers)  # the tenant's default dataset, client-declared
    api.call(headers, declared, "forward_backward", {"batch": {"input_ids": [[1, 2, 3]],
                                                               "labels": [[2, 3, 4]]}})  # fmt: skip
    api.call(headers, declared, "optim_step", {})
    with api.context.db.sessions() as session:
        rows = {
            r.run_id: r
            for r in session.scalars(
                select(LedgerEventRow).where(
                    LedgerEventRow.kind == "dp_step", LedgerEventRow.run_id.in_([run_id, declared])
                )
            )
        }
        artifact = session.get(ArtifactRow, saved["artifact_id"])
        session.expunge(artifact)
    assert (rows[run_id].sampling, rows[run_id].privacy_unit) == ("server-poisson", "record")
    assert rows[declared].sampling == "client-declared"
    opened = open_from_store(api.context.store, api.context.keyring, artifact)
    assert opened.manifest.dp["sampling"] == "server-poisson"
    assert opened.manifest.dp["privacy_unit"] == "record"
    server_report = api.client.get(f"/v1/audit/{dataset_id}/report", headers=headers).json()
    assert server_report["notices"] == [] and server_report["runs"][0]["sampling"] == (
        "server-poisson"
    )
    declared_report = api.client.get("/v1/audit/default/report", headers=headers).json()
    assert "client-declared" in declared_report["notices"][0]
    page = api.client.get("/v1/audit/default/report", params={"format": "html"}, headers=headers)
    assert "Please note" in page.text and "built by the client" in page.text


def test_a_server_only_budget_refuses_client_declared_runs(api: Harness) -> None:
    from sqlalchemy import select

    from server.db.models import LedgerEventRow
    from server.services.admission import default_policy
    from server.settings import Settings
    from tests.server.harness import TRAIN_AND_OFFICER

    assert default_policy(Settings(environment="production")) == "server-only"
    assert default_policy(Settings(environment="development")) == "any"
    headers = api.tenant(scopes=TRAIN_AND_OFFICER)
    created = api.client.post("/v1/budgets", json={"dataset_id": "strict", "epsilon_cap": 50.0,
                              "sampling_policy": "server-only"}, headers=headers)  # fmt: skip
    assert created.status_code == 201 and created.json()["sampling_policy"] == "server-only"
    declared = {"noise_multiplier": 1.0, "dataset_size": 1000, "expected_batch_size": 4,
                "dataset_id": "strict"}  # fmt: skip
    answer = api.client.post("/v1/training_runs", json={"model_ref": "tiny-llama",
                             "dp_config": declared}, headers=headers)  # fmt: skip
    assert answer.status_code == 409 and answer.json()["field"] == "dp_config.sampling"
    opened = api.client.patch("/v1/budgets/strict", json={"sampling_policy": "any"},
                              headers=headers)  # fmt: skip
    assert opened.status_code == 200 and opened.json()["sampling_policy"] == "any"
    run_id = api.create_run(headers, dp_config=declared)
    api.call(headers, run_id, "forward_backward", {"batch": {"input_ids": [[1, 2, 3]],
                                                             "labels": [[2, 3, 4]]}})  # fmt: skip
    closed = api.client.patch("/v1/budgets/strict", json={"sampling_policy": "server-only",
                              "reason": "production data"}, headers=headers)  # fmt: skip
    assert closed.status_code == 200
    refused = api.fail(headers, run_id, "optim_step", {})
    assert refused["field"] == "dp_config.sampling" and "not taken" in refused["detail"]
    with api.context.db.sessions() as session:
        rows = list(session.scalars(select(LedgerEventRow).where(
            LedgerEventRow.tenant_id == api.last_tenant_id,
            LedgerEventRow.dataset_id == "strict").order_by(LedgerEventRow.seq)))  # fmt: skip
    assert [(r.kind, r.sampling_policy) for r in rows] == [
        ("budget_created", "server-only"),
        ("budget_changed", "any"),
        ("budget_changed", "server-only"),
    ]  # the refused step left no row
    report = api.client.get("/v1/audit/strict/report", params={"format": "html"}, headers=headers)
    assert "server-drawn batches only" in report.text


def test_user_level_draws_and_grouped_completions(api: Harness) -> None:
    headers = api.tenant()
    units = [["ann", "bob", "ann", "ann", "cy", "bob"]]
    info = register(api, headers, "patients", [records(6)], units=units)
    assert info["num_units"] == 3
    run_id = server_run(api, headers, info["dataset_id"], sample_rate=1.0, max_records_per_unit=2)
    dp = api.run(headers, run_id)["config"]["dp_config"]
    assert (dp["dataset_size"], dp["max_records_per_unit"]) == (3, 2)  # N counts people
    drawn = api.call(headers, run_id, "draw_batch", {"include_records": True})
    per_unit: dict[int, list[int]] = {}
    for record, unit in zip(drawn["record_ids"], drawn["units"], strict=True):
        per_unit.setdefault(unit, []).append(record)
    assert sorted(per_unit) == [0, 1, 2] and all(len(r) <= 2 for r in per_unit.values())
    assert per_unit[0] == sorted(per_unit[0]) and set(per_unit[0]) <= {0, 2, 3}
    out = api.call(headers, run_id, "forward_backward", {"drawn_batch_id": drawn["batch_id"]})
    assert out["metrics"]["num_examples:sum"] == len(drawn["record_ids"])
    step = api.call(headers, run_id, "optim_step", {})
    assert step["dp_metrics"]["sample_rate"] == 1.0
    with api.context.db.sessions() as session:
        from sqlalchemy import select

        from server.db.models import LedgerEventRow

        row = session.scalars(select(LedgerEventRow).where(
            LedgerEventRow.run_id == run_id, LedgerEventRow.kind == "dp_step")).one()  # fmt: skip
    assert (row.sampling, row.privacy_unit, row.dataset_size) == ("server-poisson", "unit", 3)

    # RL: two completions of one drawn prompt are one contribution
    rl = register(api, headers, "prompts", [records(3, start=50)])["dataset_id"]
    rl_run = server_run(api, headers, rl, sample_rate=1.0)
    batch = api.call(headers, rl_run, "draw_batch", {"include_records": True})
    prompt = batch["records"][0]["tokens"]

    def completion(extra: list[int]) -> dict[str, Any]:
        tokens = prompt + extra
        target = {"data": tokens, "dtype": "int64", "shape": [len(tokens)]}
        return {
            "model_input": {"chunks": [{"tokens": tokens}]},
            "record_id": batch["record_ids"][0],
            "loss_fn_inputs": {"target_tokens": target},
        }

    two = {"data": [completion([1, 2]), completion([3, 4, 5])]}
    out = api.call(headers, rl_run, "forward_backward", two)
    assert out["metrics"]["num_examples:sum"] == 2
    assert api.call(headers, rl_run, "optim_step", {})["step"] == 1


def test_a_drawn_batch_larger_than_one_call_is_computed_in_parts(
    api: Harness, dataset: tuple[dict, str]
) -> None:
    headers, dataset_id = dataset  # 20 records; the harness takes 16 per forward_backward
    run_id = server_run(api, headers, dataset_id, sample_rate=1.0)
    drawn = api.call(headers, run_id, "draw_batch", {})
    assert drawn["size"] == 20
    out = api.call(headers, run_id, "forward_backward", {"drawn_batch_id": drawn["batch_id"]})
    assert out["metrics"]["num_examples:sum"] == 20 and len(out["loss_fn_outputs"]) == 20
    assert out["loss"] > 0 and out["tokens_processed"] == 60
    assert api.call(headers, run_id, "optim_step", {})["step"] == 1


def test_a_deleted_dataset_stops_draws_not_checkpoints(
    api: Harness, dataset: tuple[dict, str]
) -> None:
    headers, dataset_id = dataset
    run_id = server_run(api, headers, dataset_id)
    api.call(headers, run_id, "draw_batch", {})
    api.call(headers, run_id, "optim_step", {})
    assert api.client.delete(f"/v1/datasets/{dataset_id}", headers=headers).status_code == 200
    runtime = api.context.executor.runtime(run_id)
    assert runtime is not None
    runtime.dataset = None  # as after a rebuild: saving must not need the dataset
    saved = api.call(headers, run_id, "save_state", {"name": "after-delete"})
    assert saved["step"] == 1
    refused = api.fail(headers, run_id, "draw_batch", {})
    assert refused["error"] == "ConflictError" and "deleted" in refused["detail"]
