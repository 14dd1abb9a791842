"""Tenants and API keys.

An API key looks like ``ts_<key_id>_<secret>``: ``key_id`` is 16 hex digits (the
row's primary key, safe to log), ``secret`` 32 random bytes in URL-safe base64.
The database keeps only ``HMAC-SHA256(pepper, key_id ":" secret)``; the pepper is
a server secret outside the database (see :class:`server.settings.Settings`). The
secret has 256 bits of entropy, so a fast keyed hash is enough — a slow password
hash would only add latency to every request. Hashes are compared in constant
time, and an unknown key id costs the same comparison as a known one. Each key holds
scopes (:mod:`server.services.scopes`); :func:`authenticate` returns them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session

from server.db.models import ApiKey, Tenant, utcnow
from server.errors import AuthenticationError, ConflictError, NotFoundError, ValidationError
from server.services.scopes import TRAIN, Scope, decode_scopes, encode_scopes, normalize_scopes
from server.settings import Settings

HASH_SCHEME = "hmac-sha256-v1"
KEY_PREFIX = "ts_"
_KEY_ID_HEX = 16
_SECRET_BYTES = 32
_API_KEY = re.compile(r"ts_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TENANT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.@-]{0,199}")


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created API key. ``api_key`` is shown once and never stored."""

    tenant_id: str
    key_id: str
    api_key: str
    scopes: tuple[Scope, ...] = (TRAIN,)

    def __repr__(self) -> str:
        return (
            f"IssuedKey(tenant_id={self.tenant_id!r}, key_id={self.key_id!r}, "
            f"scopes={self.scopes!r}, api_key=<redacted>)"
        )


@dataclass(frozen=True)
class AuthenticatedTenant:
    """Who is calling: the tenant, the key it used and that key's scopes."""

    tenant_id: str
    key_id: str
    scopes: frozenset[Scope]


class ApiKeyHasher:
    """Keyed hashing of API-key secrets.

    Example:
        >>> hasher = ApiKeyHasher(b"p" * 32)
        >>> h = hasher.hash(key_id="0123456789abcdef", secret="s")
        >>> hasher.matches(h, key_id="0123456789abcdef", secret="s")
        True
    """

    def __init__(self, pepper: bytes) -> None:
        if len(pepper) < 16:
            raise ValueError("the API-key pepper must be at least 16 bytes")
        self._pepper = pepper

    def __repr__(self) -> str:
        return "ApiKeyHasher(pepper=<redacted>)"

    def hash(self, *, key_id: str, secret: str) -> str:
        message = f"{key_id}:{secret}".encode()
        return hmac.new(self._pepper, message, hashlib.sha256).hexdigest()

    def matches(self, stored: str, *, key_id: str, secret: str) -> bool:
        return hmac.compare_digest(stored, self.hash(key_id=key_id, secret=secret))


def load_or_create_pepper(path: Path) -> bytes:
    """The pepper stored at ``path``, created (32 random bytes, mode 0600) if missing.

    Raises:
        PermissionError: the file is readable by group or others.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            raise PermissionError(
                f"{path} is accessible to group or others; fix with: chmod 600 {path}"
            ) from None
        return base64.b64decode(path.read_bytes().strip())
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(os.urandom(32)) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return base64.b64decode(path.read_bytes().strip())


def build_hasher(settings: Settings) -> ApiKeyHasher:
    """API-key hashing with the configured pepper (generated in the data dir by default)."""
    if settings.api_key_pepper is not None:
        return ApiKeyHasher(settings.api_key_pepper.get_secret_value().encode())
    return ApiKeyHasher(load_or_create_pepper(settings.pepper_path()))


def parse_api_key(api_key: str) -> tuple[str, str]:
    """``(key_id, secret)`` of a well-formed key.

    Raises:
        AuthenticationError: the key is malformed (the message never echoes it).
    """
    match = _API_KEY.fullmatch(api_key.strip())
    if match is None:
        raise AuthenticationError("malformed API key; expected 'ts_<key_id>_<secret>'")
    return match.group(1), match.group(2)


def create_tenant(
    session: Session,
    *,
    name: str,
    hasher: ApiKeyHasher,
    scopes: Iterable[Scope] = (TRAIN,),
) -> IssuedKey:
    """Create a tenant and its first API key, with ``scopes`` (flushed, not committed).

    Raises:
        ValidationError: (``name``) empty, too long or with odd characters;
            (``scopes``) empty or unknown.
        ConflictError: (``name``) a tenant with this name exists.
    """
    scopes = normalize_scopes(scopes)
    if not _TENANT_NAME.fullmatch(name):
        raise ValidationError(
            "must be 1-200 characters: letters, digits, space, '_', '.', '@', '-'", field="name"
        )
    if session.scalar(select(Tenant.tenant_id).where(Tenant.name == name)) is not None:
        raise ConflictError(f"a tenant named {name!r} already exists", field="name")
    tenant = Tenant(tenant_id="ten_" + secrets.token_hex(12), name=name, created_at=utcnow())
    session.add(tenant)
    try:
        session.flush()
    except SAIntegrityError:
        raise ConflictError(f"a tenant named {name!r} already exists", field="name") from None
    return create_api_key(session, tenant_id=tenant.tenant_id, hasher=hasher, scopes=scopes)


def create_api_key(
    session: Session,
    *,
    tenant_id: str,
    hasher: ApiKeyHasher,
    label: str | None = None,
    scopes: Iterable[Scope] = (TRAIN,),
) -> IssuedKey:
    """Issue another API key for an existing tenant, with ``scopes`` (flushed, not
    committed).

    Raises:
        ValidationError: (``scopes``) empty or unknown.
        NotFoundError: no such tenant.
    """
    scopes = normalize_scopes(scopes)
    if session.get(Tenant, tenant_id) is None:
        raise NotFoundError(f"no tenant {tenant_id!r}", field="tenant_id")
    key_id = secrets.token_hex(_KEY_ID_HEX // 2)
    secret = base64.urlsafe_b64encode(os.urandom(_SECRET_BYTES)).rstrip(b"=").decode("ascii")
    session.add(
        ApiKey(
            key_id=key_id,
            tenant_id=tenant_id,
            secret_hash=hasher.hash(key_id=key_id, secret=secret),
            hash_scheme=HASH_SCHEME,
            label=label,
            scopes=encode_scopes(scopes),
            created_at=utcnow(),
        )
    )
    session.flush()
    return IssuedKey(
        tenant_id=tenant_id,
        key_id=key_id,
        api_key=f"{KEY_PREFIX}{key_id}_{secret}",
        scopes=tuple(scopes),
    )


def revoke_api_key(session: Session, *, key_id: str) -> None:
    """Revoke a key; requests with it get 401 from now on.

    Raises:
        NotFoundError: no such key.
    """
    row = session.get(ApiKey, key_id)
    if row is None:
        raise NotFoundError(f"no API key {key_id!r}", field="key_id")
    if row.revoked_at is None:
        row.revoked_at = utcnow()


def list_tenants(session: Session) -> list[Tenant]:
    return list(session.scalars(select(Tenant).order_by(Tenant.created_at)))


def list_api_keys(session: Session, *, tenant_id: str) -> list[ApiKey]:
    """A tenant's API keys, revoked ones included, oldest first (no secrets: the rows
    hold only hashes).

    Raises:
        NotFoundError: no such tenant.
    """
    if session.get(Tenant, tenant_id) is None:
        raise NotFoundError(f"no tenant {tenant_id!r}", field="tenant_id")
    query = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(ApiKey.created_at, ApiKey.key_id)))


def authenticate(session: Session, *, api_key: str, hasher: ApiKeyHasher) -> AuthenticatedTenant:
    """The tenant an API key belongs to, and the key's scopes.

    Raises:
        AuthenticationError: malformed, unknown or revoked key, or disabled tenant
            (one message for all, so the response reveals nothing).
    """
    key_id, secret = parse_api_key(api_key)
    row = session.get(ApiKey, key_id)
    stored = row.secret_hash if row is not None else "0" * 64
    ok = hasher.matches(stored, key_id=key_id, secret=secret)
    if row is None or not ok or row.revoked_at is not None:
        raise AuthenticationError("invalid or revoked API key")
    tenant = session.get(Tenant, row.tenant_id)
    if tenant is None or tenant.disabled_at is not None:
        raise AuthenticationError("invalid or revoked API key")
    return AuthenticatedTenant(
        tenant_id=row.tenant_id, key_id=key_id, scopes=decode_scopes(row.scopes)
    )


__all__ = [
    "HASH_SCHEME",
    "ApiKeyHasher",
    "AuthenticatedTenant",
    "IssuedKey",
    "authenticate",
    "build_hasher",
    "create_api_key",
    "create_tenant",
    "list_api_keys",
    "list_tenants",
    "load_or_create_pepper",
    "parse_api_key",
    "revoke_api_key",
]
