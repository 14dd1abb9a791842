"""Request dependencies, as ``Annotated`` aliases that keep route signatures short.

Routes ask for what they use, never the whole server:

* ``SettingsDep``, ``DatabaseDep``, ``QueueDep``, ``NotifierDep``, ``BudgetsDep``,
  ``DatasetsDep``,
  ``KeyringDep``, ``StoreDep``, ``TokenizersDep``, ``SamplingDep``,
  ``SampleFuturesDep`` — one long-lived object each, from
  the :class:`ApiResources` the app factory put on ``app.state.resources``.
* ``SessionDep`` — a database session for the request (reads; closed afterwards).
  Routes never commit: writes happen inside service calls.
* ``CurrentTenant`` — the tenant of the ``Authorization: Bearer <api_key>`` header
  (401 otherwise), whose key must hold the ``train`` scope (403 otherwise): the
  default for every route. Authentication uses its own short session, so nothing
  stays locked while a request waits (long polls).
* ``BudgetReader`` — a key with ``train`` or ``privacy-officer``: reading budgets,
  ledgers and audit reports.
* ``PrivacyOfficer`` — a key with ``privacy-officer``: creating budgets, changing
  caps. (``admin`` passes every scope check; see :mod:`server.services.scopes`.)
* ``DPPolicyOfficer`` — the same scope, for setting and reading the tenant's DP policy
  (only the privacy officer reads it: a ``train`` key is told its settings only when
  a run asks for looser ones).
* ``IdempotencyKey`` — the optional ``Idempotency-Key`` header.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from server.db.session import Database
from server.errors import AuthenticationError
from server.json_logs import request_context
from server.queue import FutureNotifier, OperationQueue
from server.services.budgets import BudgetService
from server.services.datasets import DatasetService
from server.services.rate_limits import TenantRateLimiter
from server.services.runs import TokenizerSource
from server.services.sample_futures import SampleFutures
from server.services.sampling import SamplingBackend
from server.services.scopes import PRIVACY_OFFICER, TRAIN, Scope, require_scope
from server.services.tenants import ApiKeyHasher, AuthenticatedTenant, authenticate
from server.settings import Settings
from server.storage import ArtifactStore
from tensafe.artifacts import TenantKeyring


@dataclass(frozen=True)
class ApiResources:
    """What the routes may reach (built by :func:`server.app.create_app` from the
    server's context, so the API layer never imports the worker)."""

    settings: Settings
    db: Database
    hasher: ApiKeyHasher
    queue: OperationQueue
    notifier: FutureNotifier
    budgets: BudgetService
    datasets: DatasetService
    keyring: TenantKeyring
    store: ArtifactStore
    tokenizers: TokenizerSource
    sampling: SamplingBackend
    sample_futures: SampleFutures
    rate_limiter: TenantRateLimiter | None = None


_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="Your tenant's API key: `Authorization: Bearer ts_<key_id>_<secret>`",
)


def get_resources(request: Request) -> ApiResources:
    return request.app.state.resources  # type: ignore[no-any-return]


_Resources = Annotated[ApiResources, Depends(get_resources)]


def get_settings(resources: _Resources) -> Settings:
    return resources.settings


def get_database(resources: _Resources) -> Database:
    return resources.db


def get_queue(resources: _Resources) -> OperationQueue:
    return resources.queue


def get_notifier(resources: _Resources) -> FutureNotifier:
    return resources.notifier


def get_budgets(resources: _Resources) -> BudgetService:
    return resources.budgets


def get_datasets(resources: _Resources) -> DatasetService:
    return resources.datasets


def get_keyring(resources: _Resources) -> TenantKeyring:
    return resources.keyring


def get_store(resources: _Resources) -> ArtifactStore:
    return resources.store


def get_tokenizers(resources: _Resources) -> TokenizerSource:
    return resources.tokenizers


def get_sampling(resources: _Resources) -> SamplingBackend:
    return resources.sampling


def get_sample_futures(resources: _Resources) -> SampleFutures:
    return resources.sample_futures


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_database)]
QueueDep = Annotated[OperationQueue, Depends(get_queue)]
NotifierDep = Annotated[FutureNotifier, Depends(get_notifier)]
BudgetsDep = Annotated[BudgetService, Depends(get_budgets)]
DatasetsDep = Annotated[DatasetService, Depends(get_datasets)]
KeyringDep = Annotated[TenantKeyring, Depends(get_keyring)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
TokenizersDep = Annotated[TokenizerSource, Depends(get_tokenizers)]
SamplingDep = Annotated[SamplingBackend, Depends(get_sampling)]
SampleFuturesDep = Annotated[SampleFutures, Depends(get_sample_futures)]


def get_session(db: DatabaseDep) -> Iterator[Session]:
    with db.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_api_key(
    resources: _Resources,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AuthenticatedTenant:
    """The caller's tenant and key, whatever its scopes (routes use a
    :class:`RequireScope` alias instead).

    Each authenticated request spends one of the tenant's rate limit.

    Raises:
        AuthenticationError: no bearer token, or an invalid/revoked key (401).
        RateLimitError: the tenant is above its request rate (429, ``Retry-After``).
    """
    if credentials is None:
        raise AuthenticationError("missing API key: send 'Authorization: Bearer <api_key>'")
    with resources.db.sessions() as session:
        tenant = authenticate(session, api_key=credentials.credentials, hasher=resources.hasher)
    if resources.rate_limiter is not None:
        resources.rate_limiter.take(tenant.tenant_id)
    log_context = request_context.get()
    if log_context is not None:
        log_context["tenant_id"] = tenant.tenant_id
    return tenant


class RequireScope:
    """Dependency: the caller's key, which must hold one of ``scopes``.

    Checked before the route looks anything up, so a refusal says nothing about the
    tenant's objects.

    Example:
        >>> Officer = Annotated[
        ...     AuthenticatedTenant,
        ...     Depends(RequireScope("privacy-officer", action="changing a budget")),
        ... ]
    """

    def __init__(self, *scopes: Scope, action: str) -> None:
        if not scopes:
            raise ValueError("RequireScope needs at least one scope")
        self.scopes = scopes
        self.action = action

    def __call__(
        self, key: Annotated[AuthenticatedTenant, Depends(get_api_key)]
    ) -> AuthenticatedTenant:
        """The key, if it may.

        Raises:
            AuthenticationError: no or an invalid key (401).
            PermissionDeniedError: the key lacks the scope (403), naming it.
        """
        require_scope(
            key.scopes,
            any_of=self.scopes,
            action=self.action,
            key_id=key.key_id,
            tenant_id=key.tenant_id,
        )
        return key


_TRAINING = "this route (training runs, datasets, futures, artifacts, key export)"
CurrentTenant = Annotated[AuthenticatedTenant, Depends(RequireScope(TRAIN, action=_TRAINING))]
BudgetReader = Annotated[
    AuthenticatedTenant,
    Depends(RequireScope(TRAIN, PRIVACY_OFFICER, action="reading budgets and audits")),
]
PrivacyOfficer = Annotated[
    AuthenticatedTenant,
    Depends(RequireScope(PRIVACY_OFFICER, action="creating or changing a privacy budget")),
]

DPPolicyOfficer = Annotated[
    AuthenticatedTenant,
    Depends(RequireScope(PRIVACY_OFFICER, action="setting or reading the tenant's DP policy")),
]

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=128,
        description="Repeat a POST with the same key to get the original result instead of a "
        "second operation.",
    ),
]

__all__ = [
    "ApiResources",
    "BudgetReader",
    "BudgetsDep",
    "CurrentTenant",
    "DPPolicyOfficer",
    "DatabaseDep",
    "DatasetsDep",
    "IdempotencyKey",
    "KeyringDep",
    "NotifierDep",
    "PrivacyOfficer",
    "QueueDep",
    "RequireScope",
    "SampleFuturesDep",
    "SamplingDep",
    "SessionDep",
    "SettingsDep",
    "StoreDep",
    "TokenizersDep",
    "get_api_key",
    "get_resources",
]
