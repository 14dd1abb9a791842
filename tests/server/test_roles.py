"""Roles (API-key scopes): a training key cannot create or raise a privacy budget, a
privacy-officer key can and the ledger names it, ``admin`` is the union; keys older
than migration 0006 are training keys."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.orm import Session
from tg_tinker import errors as sdk_errors
from tg_tinker.errors import error_from_body

from server.app import create_app
from server.context import build_context
from server.db.migrate import alembic_config, upgrade_database
from server.db.models import ApiKey, LedgerEventRow, PrivacyBudgetRow
from server.db.session import Database
from server.errors import PermissionDeniedError, ValidationError, describe_error
from server.services.scopes import (
    ADMIN,
    PRIVACY_OFFICER,
    SCOPES,
    TRAIN,
    decode_scopes,
    encode_scopes,
    require_scope,
)
from server.services.tenants import ApiKeyHasher, authenticate, create_tenant, list_api_keys
from server.settings import Settings
from tests.server.databases import postgres_available, postgres_database
from tests.server.harness import Harness, run_config

PEPPER = "p" * 32


def _ledger(api: Harness, tenant_id: str, dataset: str) -> list[LedgerEventRow]:
    with api.context.db.sessions() as session:
        return api.context.executor.budgets.events(session, tenant_id, dataset)


def _budget_row(api: Harness, tenant_id: str, dataset: str) -> PrivacyBudgetRow | None:
    with api.context.db.sessions() as session:
        return session.scalars(
            select(PrivacyBudgetRow).where(
                PrivacyBudgetRow.tenant_id == tenant_id, PrivacyBudgetRow.dataset_id == dataset
            )
        ).one_or_none()


def _assert_refused(response, *, needs: str, key_id: str, has: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["error"] == "PermissionDeniedError" and body["category"] == "user"
    assert f"scope '{needs}'" in body["detail"]
    assert f"({key_id}) has scope(s): {has}" in body["detail"]
    assert f"--scope {needs}" in body["detail"]


def test_a_train_key_cannot_create_or_raise_a_budget_and_nothing_is_written(
    api: Harness,
) -> None:
    train = api.tenant()  # scope train only
    tenant_id, train_key = api.last_tenant_id, api.last_key_id
    secret = api.last_key
    dataset = "roles-" + uuid.uuid4().hex[:6]

    refused = api.client.post(
        "/v1/budgets", json={"dataset_id": dataset, "epsilon_cap": 5.0}, headers=train
    )
    _assert_refused(refused, needs=PRIVACY_OFFICER, key_id=train_key, has="train")
    assert secret not in refused.text
    assert _budget_row(api, tenant_id, dataset) is None
    assert _ledger(api, tenant_id, dataset) == []

    _, officer = api.key(tenant_id, scopes=(PRIVACY_OFFICER,))
    created = api.client.post(
        "/v1/budgets", json={"dataset_id": dataset, "epsilon_cap": 5.0}, headers=officer
    )
    assert created.status_code == 201, created.text
    before = [(r.seq, r.link) for r in _ledger(api, tenant_id, dataset)]

    raised = api.client.patch(f"/v1/budgets/{dataset}", json={"epsilon_cap": 50.0}, headers=train)
    _assert_refused(raised, needs=PRIVACY_OFFICER, key_id=train_key, has="train")
    assert [(r.seq, r.link) for r in _ledger(api, tenant_id, dataset)] == before
    row = _budget_row(api, tenant_id, dataset)
    assert row is not None and row.epsilon_cap == 5.0

    # the scope is checked before any lookup: an unknown dataset says the same
    unknown = api.client.patch("/v1/budgets/nope", json={"epsilon_cap": 1.0}, headers=train)
    _assert_refused(unknown, needs=PRIVACY_OFFICER, key_id=train_key, has="train")

    # reading stays with train
    assert api.client.get(f"/v1/budgets/{dataset}", headers=train).json()["epsilon_cap"] == 5.0
    assert api.client.get("/v1/budgets", headers=train).status_code == 200
    assert api.client.get(f"/v1/audit/{dataset}/report", headers=train).status_code == 200
    assert api.client.get("/v1/audit/verify", headers=train).json()["ok"] is True


def test_a_privacy_officer_key_changes_budgets_and_the_ledger_names_its_key(
    api: Harness,
) -> None:
    api.tenant()
    tenant_id = api.last_tenant_id
    officer_id, officer = api.key(tenant_id, scopes=(PRIVACY_OFFICER,))
    dataset = "officer-" + uuid.uuid4().hex[:6]

    created = api.client.post(
        "/v1/budgets",
        json={"dataset_id": dataset, "epsilon_cap": 2.0, "reason": "IRB 42"},
        headers=officer,
    )
    assert created.status_code == 201, created.text
    raised = api.client.patch(
        f"/v1/budgets/{dataset}", json={"epsilon_cap": 3.0, "reason": "approved"}, headers=officer
    )
    assert raised.status_code == 200 and raised.json()["epsilon_cap"] == 3.0
    rows = _ledger(api, tenant_id, dataset)
    assert [(r.kind, r.actor, r.reason) for r in rows] == [
        ("budget_created", f"api:{officer_id}", "IRB 42"),
        ("budget_changed", f"api:{officer_id}", "approved"),
    ]
    secret = officer["Authorization"].split("_", 2)[2]
    assert all(secret not in (r.actor or "") for r in rows)

    # the officer reads budgets and audits, but does not train
    assert api.client.get(f"/v1/budgets/{dataset}", headers=officer).status_code == 200
    assert api.client.get(f"/v1/audit/{dataset}/report", headers=officer).status_code == 200
    runs = api.client.post("/v1/training_runs", json=run_config(), headers=officer)
    _assert_refused(runs, needs=TRAIN, key_id=officer_id, has="privacy-officer")
    assert api.client.get("/v1/training_runs", headers=officer).status_code == 403
    assert api.client.get("/v1/keys/export", headers=officer).status_code == 403


def test_an_admin_key_may_do_everything(api: Harness) -> None:
    admin = api.tenant(scopes=(ADMIN,))
    dataset = "admin-" + uuid.uuid4().hex[:6]
    created = api.client.post(
        "/v1/budgets", json={"dataset_id": dataset, "epsilon_cap": 5.0}, headers=admin
    )
    assert created.status_code == 201, created.text
    api.create_run(admin, dp_config={**run_config()["dp_config"], "dataset_id": dataset})
    assert api.client.get("/v1/audit/verify", headers=admin).json()["ok"] is True


def test_a_key_may_hold_several_scopes(session: Session) -> None:
    hasher = ApiKeyHasher(PEPPER.encode())
    issued = create_tenant(
        session,
        name="both-" + uuid.uuid4().hex[:6],
        hasher=hasher,
        scopes=("privacy-officer", TRAIN),
    )
    assert issued.scopes == (TRAIN, PRIVACY_OFFICER)
    who = authenticate(session, api_key=issued.api_key, hasher=hasher)
    assert who.scopes == {TRAIN, PRIVACY_OFFICER}
    (row,) = list_api_keys(session, tenant_id=issued.tenant_id)
    assert row.scopes == "train privacy-officer"
    with pytest.raises(ValidationError, match="unknown scope") as bad:
        create_tenant(session, name="bad-scope", hasher=hasher, scopes=("root",))  # type: ignore[arg-type]
    assert bad.value.field == "scopes"
    with pytest.raises(ValidationError, match="at least one"):
        create_tenant(session, name="no-scope", hasher=hasher, scopes=())


def test_scope_names_round_trip_and_unknown_names_grant_nothing() -> None:
    assert SCOPES == ("train", "privacy-officer", "admin")
    assert encode_scopes([ADMIN, TRAIN, TRAIN]) == "train admin"
    assert decode_scopes("train admin") == {TRAIN, ADMIN}
    assert decode_scopes("superuser privacy-officer") == {PRIVACY_OFFICER}
    assert decode_scopes("") == frozenset() and decode_scopes(None) == frozenset()
    with pytest.raises(PermissionDeniedError) as denied:
        require_scope(
            frozenset(), any_of=(TRAIN,), action="training", key_id="k1", tenant_id="ten_1"
        )
    assert "has scope(s): none" in str(denied.value)
    status, body = describe_error(denied.value)
    assert status == 403 and body.error == "PermissionDeniedError" and body.category == "user"
    back = error_from_body(body, status_code=status)  # what the SDK raises
    assert type(back) is sdk_errors.PermissionDeniedError and back.status_code == 403
    assert "has scope(s): none" in str(back)
    require_scope(
        frozenset({ADMIN}), any_of=(PRIVACY_OFFICER,), action="x", key_id="k", tenant_id="t"
    )


# ----------------------------------------------------------------- migration 0006
def _key_issued_before_scopes(url: str, hasher: ApiKeyHasher) -> tuple[str, str]:
    """A database at revision 0005 holding one tenant and one key; ``(tenant_id, api_key)``."""
    command.upgrade(alembic_config(url), "0005")
    key_id, secret = uuid.uuid4().hex[:16], "s" * 43
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenants (tenant_id, name, created_at) "
                    "VALUES ('ten_old', 'old-tenant', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO api_keys (key_id, tenant_id, secret_hash, hash_scheme, "
                    "created_at) VALUES (:k, 'ten_old', :h, 'hmac-sha256-v1', CURRENT_TIMESTAMP)"
                ),
                {"k": key_id, "h": hasher.hash(key_id=key_id, secret=secret)},
            )
    finally:
        db.dispose()
    return "ten_old", f"ts_{key_id}_{secret}"


def _check_old_key_is_train_only(url: str, caplog: pytest.LogCaptureFixture) -> None:
    hasher = ApiKeyHasher(PEPPER.encode())
    _, api_key = _key_issued_before_scopes(url, hasher)
    with caplog.at_level(logging.WARNING, logger="tensafe.server.migration"):
        upgrade_database(url)
    assert any("1 existing API key(s) now have scope 'train' only" in m for m in caplog.messages)
    db = Database(url)
    try:
        with db.sessions() as session:
            assert authenticate(session, api_key=api_key, hasher=hasher).scopes == {TRAIN}
            (row,) = session.scalars(select(ApiKey)).all()
            assert row.scopes == "train"
    finally:
        db.dispose()


def test_keys_older_than_scopes_become_train_keys_sqlite(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _check_old_key_is_train_only(f"sqlite:///{tmp_path / 'old.db'}", caplog)


def test_keys_older_than_scopes_become_train_keys_postgresql(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_database() as url:
        _check_old_key_is_train_only(url, caplog)


def test_an_old_key_keeps_training_but_cannot_raise_the_cap_after_upgrade(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    """The server's own start migrates; the old key trains and is refused a budget."""
    url = f"sqlite:///{tmp_path / 'upgrade.db'}"
    _, api_key = _key_issued_before_scopes(url, ApiKeyHasher(PEPPER.encode()))
    settings = make_settings(database_url=url, api_key_pepper=PEPPER, default_epsilon_cap=100.0)
    with TestClient(create_app(settings, context=build_context(settings))) as client:
        headers = {"Authorization": f"Bearer {api_key}"}
        created = client.post("/v1/training_runs", json=run_config(), headers=headers)
        assert created.status_code == 201, created.text
        refused = client.post(
            "/v1/budgets", json={"dataset_id": "d", "epsilon_cap": 1.0}, headers=headers
        )
        assert refused.status_code == 403 and "'privacy-officer'" in refused.json()["detail"]
        listed = client.get("/v1/budgets", headers=headers).json()["budgets"]
        assert "d" not in [b["dataset_id"] for b in listed]
