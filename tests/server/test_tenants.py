"""Tenants and API keys: issue, authenticate (constant-time), revoke; nothing raw stored."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from server.db.models import ApiKey, Tenant
from server.errors import AuthenticationError, ConflictError, NotFoundError, ValidationError
from server.services.tenants import (
    ApiKeyHasher,
    authenticate,
    create_api_key,
    create_tenant,
    parse_api_key,
    revoke_api_key,
)

HASHER = ApiKeyHasher(b"p" * 32)


def test_create_and_authenticate(session: Session) -> None:
    issued = create_tenant(session, name="acme", hasher=HASHER)
    session.commit()
    who = authenticate(session, api_key=issued.api_key, hasher=HASHER)
    assert who.tenant_id == issued.tenant_id and who.key_id == issued.key_id
    key_id, secret = parse_api_key(issued.api_key)
    row = session.get(ApiKey, key_id)
    assert row is not None
    assert secret not in row.secret_hash and issued.api_key not in repr(issued)
    assert row.secret_hash == HASHER.hash(key_id=key_id, secret=secret)


def test_rolled_back_between_tests(session: Session) -> None:
    """The previous test's tenant is gone: each test starts from the same state."""
    assert session.scalar(select(Tenant).where(Tenant.name == "acme")) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda k: k[:-1] + ("A" if k[-1] != "A" else "B"),  # wrong secret
        lambda k: "ts_" + "0" * 16 + k[19:],  # unknown key id
        lambda k: k.replace("ts_", "tk_", 1),  # malformed
        lambda k: "",
    ],
)
def test_wrong_keys_are_refused(session: Session, mangle) -> None:  # type: ignore[no-untyped-def]
    issued = create_tenant(session, name="beta", hasher=HASHER)
    with pytest.raises(AuthenticationError):
        authenticate(session, api_key=mangle(issued.api_key), hasher=HASHER)


def test_other_pepper_refuses(session: Session) -> None:
    issued = create_tenant(session, name="gamma", hasher=HASHER)
    with pytest.raises(AuthenticationError):
        authenticate(session, api_key=issued.api_key, hasher=ApiKeyHasher(b"q" * 32))


def test_revoked_key_refused_other_keys_work(session: Session) -> None:
    first = create_tenant(session, name="delta", hasher=HASHER)
    second = create_api_key(session, tenant_id=first.tenant_id, hasher=HASHER, label="ci")
    revoke_api_key(session, key_id=first.key_id)
    with pytest.raises(AuthenticationError):
        authenticate(session, api_key=first.api_key, hasher=HASHER)
    assert authenticate(session, api_key=second.api_key, hasher=HASHER).tenant_id == first.tenant_id


def test_duplicate_and_bad_names(session: Session) -> None:
    create_tenant(session, name="epsilon", hasher=HASHER)
    with pytest.raises(ConflictError) as dup:
        create_tenant(session, name="epsilon", hasher=HASHER)
    assert dup.value.field == "name"
    with pytest.raises(ValidationError) as bad:
        create_tenant(session, name="", hasher=HASHER)
    assert bad.value.field == "name"


def test_unknown_tenant_and_key(session: Session) -> None:
    with pytest.raises(NotFoundError):
        create_api_key(session, tenant_id="ten_nope", hasher=HASHER)
    with pytest.raises(NotFoundError):
        revoke_api_key(session, key_id="0" * 16)
