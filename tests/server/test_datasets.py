"""Server-held datasets over the API: register in batches, validation naming the record,
ordered and retry-safe appends, encrypted shards that read back exactly, the same
content never a second dataset, versions, tenant isolation, crypto-shredding."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from server.db.models import DatasetShardRow
from server.services.dataset_reader import DatasetReader
from tests.server.harness import Harness


def records(n: int, *, start: int = 0, weight: float = 1.0) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        tokens = [7000 + i, 7001 + i, 7002 + (i % 5)]
        out.append({"tokens": tokens, "fields": {"target_tokens": [*tokens[1:], 0],
                                                  "weights": [weight] * 3}})  # fmt: skip
    return out


@pytest.fixture
def small_shards(api: Harness) -> Iterator[None]:
    """Shards of 3 records, so a few records span several sealed shards."""
    service = api.context.executor.datasets
    before, service.shard_records = service.shard_records, 3
    yield
    service.shard_records = before


def register(
    api: Harness,
    headers: dict[str, str],
    name: str,
    batches: list[list[dict[str, Any]]],
    units: list[list[str]] | None = None,
) -> dict[str, Any]:
    created = api.client.post(
        "/v1/datasets", json={"name": name, "privacy_units": units is not None}, headers=headers
    )
    assert created.status_code == 201, created.text
    dataset_id = created.json()["dataset_id"]
    offset = 0
    for i, batch in enumerate(batches):
        body: dict[str, Any] = {"offset": offset, "records": batch}
        if units is not None:
            body["units"] = units[i]
        answer = api.client.post(f"/v1/datasets/{dataset_id}/records", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        offset = answer.json()["received"]
    done = api.client.post(f"/v1/datasets/{dataset_id}/commit", headers=headers)
    assert done.status_code == 200, done.text
    return dict(done.json())


def reader(api: Harness, tenant_id: str, dataset_id: str) -> DatasetReader:
    ctx = api.context
    return DatasetReader(ctx.db, ctx.store, ctx.keyring, tenant_id=tenant_id, dataset_id=dataset_id)


def test_register_in_batches_and_read_back_exactly(api: Harness, small_shards: None) -> None:
    headers = api.tenant()
    sent = [records(4), records(5, start=4)]
    info = register(api, headers, "notes", sent)
    assert info["status"] == "ready" and info["num_records"] == 9 and info["version"] == 1
    assert info["privacy_unit"] == "record" and len(info["commitment"]) == 64
    assert info["fields"] == ["target_tokens", "weights"]
    with api.context.db.sessions() as session:
        shards = session.query(DatasetShardRow).filter_by(dataset_id=info["dataset_id"]).all()
    assert sorted(s.index for s in shards) == [0, 1, 2]  # 9 records, 3 per shard
    for shard in shards:  # stored only as ciphertext
        with api.context.store.get(shard.storage_key) as blob:
            data = blob.read()
        assert np.array([7000, 7001], dtype=np.int64).tobytes() not in data
    got = reader(api, api.last_tenant_id, info["dataset_id"]).records(range(9))
    flat = [r for batch in sent for r in batch]
    for record, original in zip(got, flat, strict=True):
        assert record.tokens.tolist() == original["tokens"]
        assert record.fields["weights"].tolist() == original["fields"]["weights"]


def test_a_bad_record_is_refused_by_its_index_and_nothing_is_added(api: Harness) -> None:
    headers = api.tenant()
    dataset_id = api.client.post("/v1/datasets", json={"name": "x"}, headers=headers).json()[
        "dataset_id"
    ]
    path = f"/v1/datasets/{dataset_id}/records"
    assert (
        api.client.post(path, json={"offset": 0, "records": records(3)}, headers=headers).json()[
            "received"
        ]
        == 3
    )
    bad = records(4, start=3)
    bad[2]["fields"]["weights"] = [1.0, 1e39, 1.0]
    answer = api.client.post(path, json={"offset": 3, "records": bad}, headers=headers)
    assert answer.status_code == 422
    assert answer.json()["field"] == "records[5].fields.weights"
    missing = records(1, start=3)
    missing[0]["fields"] = {"weights": [1.0, 1.0, 1.0]}  # other fields than record 0
    answer = api.client.post(path, json={"offset": 3, "records": missing}, headers=headers)
    assert answer.status_code == 422 and answer.json()["field"] == "records[3].fields"
    gap = api.client.post(path, json={"offset": 5, "records": records(1)}, headers=headers)
    assert gap.status_code == 409 and gap.json()["field"] == "offset"
    good = records(2, start=3)
    for _ in range(2):  # a retried batch is not added twice
        again = api.client.post(path, json={"offset": 3, "records": good}, headers=headers)
        assert again.status_code == 200 and again.json()["received"] == 5
    info = api.client.post(f"/v1/datasets/{dataset_id}/commit", headers=headers).json()
    assert info["num_records"] == 5
    late = api.client.post(path, json={"offset": 5, "records": records(1)}, headers=headers)
    assert late.status_code == 409 and "immutable" in late.json()["detail"]


def test_the_same_content_is_the_same_dataset_and_names_get_versions(api: Harness) -> None:
    headers = api.tenant()
    first = register(api, headers, "notes", [records(6)])
    again = register(api, headers, "renamed", [records(3), records(3, start=3)])
    assert again["dataset_id"] == first["dataset_id"]  # no fresh budget by renaming
    listed = api.client.get("/v1/datasets", headers=headers).json()["datasets"]
    assert [d["dataset_id"] for d in listed] == [first["dataset_id"]]
    newer = register(api, headers, "notes", [records(6, weight=0.5)])
    assert newer["version"] == 2 and newer["commitment"] != first["commitment"]
    other = api.tenant()  # another tenant may hold the same content: its own dataset
    theirs = register(api, other, "notes", [records(6)])
    assert theirs["dataset_id"] != first["dataset_id"]
    assert theirs["commitment"] == first["commitment"]


def test_another_tenants_dataset_is_404_everywhere(api: Harness) -> None:
    owner = api.tenant()
    info = register(api, owner, "private", [records(2)])
    intruder = api.tenant()
    path = f"/v1/datasets/{info['dataset_id']}"
    assert api.client.get(path, headers=intruder).status_code == 404
    assert api.client.delete(path, headers=intruder).status_code == 404
    assert api.client.post(f"{path}/commit", headers=intruder).status_code == 404
    body = {"offset": 2, "records": records(1)}
    assert api.client.post(f"{path}/records", json=body, headers=intruder).status_code == 404
    assert api.client.get("/v1/datasets", headers=intruder).json()["datasets"] == []


def test_units_are_indexed_and_their_ids_never_stored(api: Harness) -> None:
    headers = api.tenant()
    units = [["patient-a", "patient-b", "patient-a"], ["patient-c", "patient-a"]]
    info = register(api, headers, "by-patient", [records(3), records(2, start=3)], units=units)
    assert info["privacy_unit"] == "unit" and info["num_units"] == 3
    grouped = reader(api, api.last_tenant_id, info["dataset_id"]).unit_records()
    assert [g.tolist() for g in grouped] == [[0, 2, 4], [1], [3]]
    created = api.client.post("/v1/datasets", json={"name": "u", "privacy_units": True},
                              headers=headers).json()  # fmt: skip
    answer = api.client.post(f"/v1/datasets/{created['dataset_id']}/records",
                             json={"offset": 0, "records": records(2), "units": ["a"]},
                             headers=headers)  # fmt: skip
    assert answer.status_code == 422 and answer.json()["field"] == "units"


def test_delete_crypto_shreds(api: Harness) -> None:
    headers = api.tenant()
    info = register(api, headers, "gone", [records(3)])
    with api.context.db.sessions() as session:
        keys = [s.storage_key for s in session.query(DatasetShardRow).filter_by(
            dataset_id=info["dataset_id"])]  # fmt: skip
    answer = api.client.delete(f"/v1/datasets/{info['dataset_id']}", headers=headers)
    assert answer.status_code == 200 and answer.json()["status"] == "deleted"
    assert api.client.get(f"/v1/datasets/{info['dataset_id']}", headers=headers).status_code == 404
    for key in keys:
        with pytest.raises(Exception):  # noqa: B017 - the blob is gone, whatever the store says
            api.context.store.get(key).__enter__()
    with pytest.raises(Exception, match=r"destroyed|no key|shred"):
        api.context.keyring.current_key(f"dataset:{info['dataset_id']}")
