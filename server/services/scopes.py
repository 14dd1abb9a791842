"""API-key scopes: which of a tenant's keys may do what.

Every API key holds one or more scopes (``api_keys.scopes``, space-separated):

=================== ==========================================================
scope               may
=================== ==========================================================
``train``           training runs and their operations, server-held datasets,
                    futures, artifacts, the tenant-key export; *read* budgets
                    and audit reports
``privacy-officer`` create budgets and change caps (and any later privacy
                    policy route); *read* budgets and audit reports
``admin``           everything (no route is admin-only yet: it is the union)
=================== ==========================================================

The point is separation of duties: the data scientist's ``train`` key cannot move
the limit its own training is held to; the privacy officer's key sets it. The API
checks scopes in its dependencies (:class:`server.api.deps.RequireScope`) before it
looks anything up, so a refusal reveals nothing about the tenant's objects. The
``tensafe admin`` CLI runs as the operator on the server machine and is not
subject to scopes.

Example:
    >>> sorted(decode_scopes(encode_scopes(["privacy-officer", "train", "train"])))
    ['privacy-officer', 'train']
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, Literal, get_args

from server.errors import PermissionDeniedError, ValidationError

Scope = Literal["train", "privacy-officer", "admin"]
TRAIN: Final = "train"
PRIVACY_OFFICER: Final = "privacy-officer"
ADMIN: Final = "admin"
SCOPES: Final[tuple[Scope, ...]] = get_args(Scope)

#: What a key issued before scopes existed holds after migration 0006 (and what a
#: row inserted without naming its scopes gets): training only. See docs/operations.md.
LEGACY_SCOPES: Final[tuple[Scope, ...]] = (TRAIN,)


def normalize_scopes(scopes: Iterable[str]) -> tuple[Scope, ...]:
    """``scopes`` deduplicated, in :data:`SCOPES` order.

    Raises:
        ValidationError: (``scopes``) empty, or a name that is not a scope.
    """
    given = set(scopes)
    unknown = sorted(given - set(SCOPES))
    if unknown:
        raise ValidationError(
            f"unknown scope(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(SCOPES)}",
            field="scopes",
        )
    if not given:
        raise ValidationError(f"at least one of: {', '.join(SCOPES)}", field="scopes")
    return tuple(s for s in SCOPES if s in given)


def encode_scopes(scopes: Iterable[str]) -> str:
    """The ``api_keys.scopes`` column value for ``scopes`` (validated as
    :func:`normalize_scopes` does, and raising what it raises)."""
    return " ".join(normalize_scopes(scopes))


def decode_scopes(stored: str | None) -> frozenset[Scope]:
    """The scopes an ``api_keys.scopes`` value grants. Names this server does not know
    grant nothing (fail closed)."""
    names = set((stored or "").split())
    return frozenset(s for s in SCOPES if s in names)


def require_scope(
    granted: frozenset[Scope],
    *,
    any_of: tuple[Scope, ...],
    action: str,
    key_id: str,
    tenant_id: str,
) -> None:
    """Pass if ``granted`` holds one of ``any_of`` (``admin`` holds them all).

    Raises:
        PermissionDeniedError: naming the action, the scope(s) needed, the key's
            scopes, and the command an operator runs to issue a suitable key.
    """
    if ADMIN in granted or granted.intersection(any_of):
        return
    needed = " or ".join(repr(s) for s in any_of)
    held = ", ".join(s for s in SCOPES if s in granted) or "none"
    raise PermissionDeniedError(
        f"{action} needs an API key with scope {needed}; this key ({key_id}) has scope(s): "
        f"{held}. An operator issues one with: "
        f"tensafe admin create-key {tenant_id} --scope {any_of[0]}"
    )


__all__ = [
    "ADMIN",
    "LEGACY_SCOPES",
    "PRIVACY_OFFICER",
    "SCOPES",
    "TRAIN",
    "Scope",
    "decode_scopes",
    "encode_scopes",
    "normalize_scopes",
    "require_scope",
]
