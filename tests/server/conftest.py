"""Server test fixtures.

* ``database_url`` — parametrized over SQLite and PostgreSQL (one fresh, migrated
  database per backend per test session).
* ``session`` — a session on it whose work is rolled back after each test (the
  test's commits become savepoints of one outer transaction).
* ``make_settings`` — development-mode settings in a temporary data dir.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from server.db.migrate import upgrade_database
from server.db.session import Database
from server.settings import Settings
from tests.server.databases import postgres_available, postgres_database
from tests.server.harness import Harness


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_database() as url:
        upgrade_database(url)
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'tensafe.db'}"
    upgrade_database(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """A migrated database of each backend (shared by the session's tests)."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture(scope="session")
def _databases() -> dict[str, Database]:
    return {}


@pytest.fixture
def database(database_url: str, _databases: dict[str, Database]) -> Database:
    """One :class:`Database` per URL for the whole session."""
    if database_url not in _databases:
        _databases[database_url] = Database(database_url)
    return _databases[database_url]


@pytest.fixture
def session(database: Database) -> Iterator[Session]:
    """A session rolled back after the test, whatever the test committed."""
    connection = database.engine.connect()
    outer = connection.begin()
    s = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield s
    finally:
        s.close()
        outer.rollback()
        connection.close()


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "environment": "development",
            "data_dir": tmp_path / "data",
            "worker_threads": 1,
            "sweep_interval_s": 3600,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture(scope="session")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """One running app (SQLite, real engine, local artifact store) shared by API tests."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.context import build_context

    settings = Settings(
        environment="development",
        data_dir=tmp_path_factory.mktemp("api") / "data",
        worker_threads=2,
        sweep_interval_s=3600,
        max_body_bytes=256 * 1024,
        max_batch_size=16,
        max_seq_len=64,
        default_epsilon_cap=1000.0,  # DP runs' datasets get a budget on first use
    )
    context = build_context(settings)
    with TestClient(create_app(settings, context=context)) as client:
        yield Harness(client, context)
