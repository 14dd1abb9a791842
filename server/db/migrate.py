"""Apply the Alembic migrations in the top-level ``migrations/`` folder (at start and
by ``tensafe db upgrade``). A wheel ships that folder as the package
``server.migrations`` (see ``setup.py``), so an installed server migrates the same
way as a source checkout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from server.db.models import UTCDateTime


def _find_migrations() -> Path:
    """The Alembic folder: ``server/migrations`` in an installed wheel, else
    ``migrations/`` beside ``server/`` in a source checkout (editable install or
    ``PYTHONPATH``). The wheel's place is tried first: the folder beside an installed
    ``server/`` is ``site-packages/migrations``, which is not ours."""
    server_dir = Path(__file__).resolve().parents[1]
    candidates = (server_dir / "migrations", server_dir.parent / "migrations")
    for candidate in candidates:
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError(
        "Alembic migrations not found; looked in " + ", ".join(str(c) for c in candidates)
    )


MIGRATIONS_DIR = _find_migrations()


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
    """The newest revision in ``migrations/versions``."""
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
