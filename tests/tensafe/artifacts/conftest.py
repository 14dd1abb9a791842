"""Fixtures for the artifact tests: deterministic keys and tiny payloads."""

from __future__ import annotations

import pytest

from tensafe.artifacts import Manifest, TenantKey

SMALL_CHUNK = 64


@pytest.fixture
def tenant_key() -> TenantKey:
    """A fixed key of tenant ``acme`` (deterministic material)."""
    return TenantKey("acme", "tk_acme", 1, bytes(range(32)))


@pytest.fixture
def other_key() -> TenantKey:
    """Same tenant, key id and version as ``tenant_key`` but different material."""
    return TenantKey("acme", "tk_acme", 1, bytes(range(1, 33)))


@pytest.fixture
def small_manifest() -> Manifest:
    """A compact manifest (no library versions) so small artifacts stay small."""
    return Manifest(
        kind="full_weights",
        base_model="tiny",
        step=1,
        library_versions={},
        created_at="2025-01-01T00:00:00Z",
    )
