"""Alembic: an empty database upgrades to head and then matches the models exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from server.db.migrate import alembic_config, current_revision, head_revision, upgrade_database
from server.db.models import Base
from server.db.session import make_engine
from tests.server.databases import postgres_available, postgres_database


def _diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def _check_fresh_upgrade(url: str) -> None:
    upgrade_database(url)
    engine = make_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables
    assert _diff(url) == []


def test_sqlite_empty_database_upgrades_to_head_without_diff(tmp_path: Path) -> None:
    _check_fresh_upgrade(f"sqlite:///{tmp_path / 'fresh.db'}")


def test_postgresql_empty_database_upgrades_to_head_without_diff() -> None:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_database() as url:
        _check_fresh_upgrade(url)


def test_downgrade_to_base_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade_database(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    try:
        assert current_revision(engine) is None
        assert not set(Base.metadata.tables) & set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    upgrade_database(url)
    assert _diff(url) == []


def test_diff_detects_a_model_change(tmp_path: Path) -> None:
    """The check above can fail: a database missing a column shows a diff."""
    url = f"sqlite:///{tmp_path / 'drift.db'}"
    upgrade_database(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE tenants DROP COLUMN disabled_at")
    engine.dispose()
    assert any("disabled_at" in repr(change) for change in _diff(url))


def test_sqlite_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()
    assert path.stat().st_mode & 0o077 == 0


def test_migration_scripts_ship_inside_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server
    from server.db.migrate import MIGRATIONS_DIR

    package = Path(server.__file__).resolve().parent
    assert MIGRATIONS_DIR.is_relative_to(package)  # a wheel carries them
    assert sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("0*.py"))
    monkeypatch.chdir(tmp_path)  # neither the working directory nor alembic.ini matters
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade_database(url)
    assert current_revision(make_engine(url)) == head_revision()
