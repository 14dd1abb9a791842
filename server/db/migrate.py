"""Apply the Alembic migrations in ``server/db/migrations/`` (at start and by
``tensafe db upgrade``). The scripts ship inside the package, so an installed wheel
migrates the same way as a source checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from server.db.models import UTCDateTime

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that depends on neither the working directory nor
    an ``alembic.ini`` (the repository's one is for developers' ``alembic`` commands)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("path_separator", "os")
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    return config


def upgrade_database(url: str, *, revision: str = "head") -> None:
    """Migrate the database at ``url`` to ``revision`` (creating the tables on an empty one).

    Raises:
        alembic.util.CommandError: unknown revision.
        sqlalchemy.exc.OperationalError: the database cannot be reached.
    """
    command.upgrade(alembic_config(url), revision)


def head_revision() -> str | None:
    """The newest revision in ``server/db/migrations/versions``."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def current_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for an empty database)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render our column types as plain SQLAlchemy types in generated migrations."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


__all__ = [
    "MIGRATIONS_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "render_item",
    "upgrade_database",
]
