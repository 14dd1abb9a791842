"""Authentication and error shaping for the Tinker-protocol routes.

The official client sends ``X-API-Key`` and insists (client-side) on a ``tml-``
prefix, so a TenSafe key ``ts_<id>_<secret>`` is given to it as ``tml-ts_<id>_<secret>``;
the prefix is dropped here and the key checked exactly as on ``/v1`` (same tenants,
same scopes: the ``train`` scope is needed).

The client retries 409 (and 408, 429, 5xx) for minutes, so a refusal that will not go
away by itself (a taken name, a budget that cannot afford the run) is answered with 400
on these routes: :func:`refusals_are_final`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, Header

from server.api.deps import ApiResources, get_resources
from server.errors import AuthenticationError, ServiceError, describe_error
from server.json_logs import request_context
from server.services.scopes import TRAIN, require_scope
from server.services.tenants import AuthenticatedTenant, authenticate
from tensafe.errors import TenSafeError

TINKER_KEY_PREFIX = "tml-"


class RefusedError(ServiceError, RuntimeError):
    """A refusal the Tinker client must not retry (400)."""

    status_code = 400
    category = "user"


def tinker_tenant(
    resources: Annotated[ApiResources, Depends(get_resources)],
    x_api_key: Annotated[str | None, Header(alias="X-API-Key")] = None,
) -> AuthenticatedTenant:
    """The caller's tenant; its key must hold the ``train`` scope.

    Raises:
        AuthenticationError: no ``X-API-Key``, or an invalid/revoked key (401).
        PermissionDeniedError: the key lacks ``train`` (403).
        RateLimitError: the tenant is above its request rate (429; the client backs off).
    """
    if not x_api_key:
        raise AuthenticationError("missing API key: send 'X-API-Key: tml-<your TenSafe key>'")
    key = x_api_key.removeprefix(TINKER_KEY_PREFIX)
    with resources.db.sessions() as session:
        tenant = authenticate(session, api_key=key, hasher=resources.hasher)
    if resources.rate_limiter is not None:  # the same per-tenant rate as /v1
        resources.rate_limiter.take(tenant.tenant_id)
    require_scope(
        tenant.scopes,
        any_of=(TRAIN,),
        action="the Tinker protocol (training)",
        key_id=tenant.key_id,
        tenant_id=tenant.tenant_id,
    )
    log_context = request_context.get()
    if log_context is not None:
        log_context["tenant_id"] = tenant.tenant_id
    return tenant


TinkerTenant = Annotated[AuthenticatedTenant, Depends(tinker_tenant)]


@contextmanager
def refusals_are_final() -> Iterator[None]:
    """Re-raise a 409 refusal as a 400 :class:`RefusedError` (same detail and field)."""
    try:
        yield
    except (ServiceError, TenSafeError) as exc:
        status, body = describe_error(exc)
        if status != 409:
            raise
        raise RefusedError(body.detail, field=body.field) from None


__all__ = ["TINKER_KEY_PREFIX", "RefusedError", "TinkerTenant", "refusals_are_final"]
