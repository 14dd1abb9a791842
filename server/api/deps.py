"""Request dependencies, as ``Annotated`` aliases that keep route signatures short.

* ``ContextDep`` — the app's :class:`~server.context.ServerContext`.
* ``SessionDep`` — a database session for the request, closed afterwards.
* ``CurrentTenant`` — the tenant of the ``Authorization: Bearer <api_key>`` header
  (401 otherwise). Authentication uses its own short session, so nothing stays
  locked while a request waits (long polls).
* ``IdempotencyKey`` — the optional ``Idempotency-Key`` header.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from server.context import ServerContext
from server.errors import AuthenticationError
from server.json_logs import request_context
from server.services.tenants import AuthenticatedTenant, authenticate

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="Your tenant's API key: `Authorization: Bearer ts_<key_id>_<secret>`",
)


def get_context(request: Request) -> ServerContext:
    return request.app.state.context  # type: ignore[no-any-return]


ContextDep = Annotated[ServerContext, Depends(get_context)]


def get_session(context: ContextDep) -> Iterator[Session]:
    with context.db.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_current_tenant(
    context: ContextDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AuthenticatedTenant:
    """The caller's tenant.

    Raises:
        AuthenticationError: no bearer token, or an invalid/revoked key (401).
    """
    if credentials is None:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <api_key>'")
    with context.db.sessions() as session:
        tenant = authenticate(session, api_key=credentials.credentials, hasher=context.hasher)
    log_context = request_context.get()
    if log_context is not None:
        log_context["tenant_id"] = tenant.tenant_id
    return tenant


CurrentTenant = Annotated[AuthenticatedTenant, Depends(get_current_tenant)]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=128,
        description="Repeat a POST with the same key to get the original result instead of a "
        "second operation.",
    ),
]

__all__ = ["ContextDep", "CurrentTenant", "IdempotencyKey", "SessionDep", "get_context"]
