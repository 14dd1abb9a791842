"""Alembic: an empty database upgrades to head and then matches the models exactly."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
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


ROOT = Path(__file__).resolve().parents[2]


def test_a_source_checkout_migrates_from_the_top_level_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from server.db.migrate import MIGRATIONS_DIR

    assert MIGRATIONS_DIR == ROOT / "migrations"
    assert sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("0*.py"))
    monkeypatch.chdir(tmp_path)  # neither the working directory nor alembic.ini matters
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade_database(url)
    assert current_revision(make_engine(url)) == head_revision()


_MIGRATE_FROM_WHEEL = """
import sys
from server.db.migrate import MIGRATIONS_DIR, current_revision, head_revision, upgrade_database
from server.db.session import make_engine

url = "sqlite:///" + sys.argv[1]
upgrade_database(url)
print(MIGRATIONS_DIR)
print(current_revision(make_engine(url)) == head_revision() is not None)
"""


def test_a_built_wheel_ships_every_migration_and_migrates(tmp_path: Path) -> None:
    """Build the wheel from a copy of the sources, check it carries env.py, the template
    and every file of migrations/versions, then migrate from the unpacked wheel alone."""
    source = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("tensafe", "server", "sdk", "migrations"):
        shutil.copytree(ROOT / name, source / name, ignore=skip)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index"]
    subprocess.run(
        [*pip_wheel, "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = wheels.glob("tensafe-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
        revisions = {p.name for p in (ROOT / "migrations" / "versions").glob("*.py")}
        expected = {"server/migrations/env.py", "server/migrations/script.py.mako"}
        expected |= {f"server/migrations/versions/{name}" for name in revisions}
        assert expected <= shipped
        assert not any(name.startswith("migrations/") for name in shipped)
        archive.extractall(tmp_path / "site")
    site = tmp_path / "site"
    out = subprocess.run(
        [sys.executable, "-c", _MIGRATE_FROM_WHEEL, str(tmp_path / "db.sqlite")],
        cwd=tmp_path,  # not the checkout: only the unpacked wheel provides server/
        env={**os.environ, "PYTHONPATH": str(site)},
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    where, at_head = out.stdout.split()
    assert Path(where) == site / "server" / "migrations"
    assert at_head == "True"
