"""Database engine and sessions, the same for SQLite and PostgreSQL.

SQLite gets WAL mode, foreign keys, a busy timeout and ``BEGIN IMMEDIATE``
transactions: every transaction takes the write lock up front, so two writers
queue on the busy timeout instead of one failing with "database is locked" when
it upgrades a read transaction. Transactions here are short (no engine work
happens inside one), so serialising them costs little.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver must not open transactions itself; we issue BEGIN IMMEDIATE below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """A SQLAlchemy engine for ``url``; a SQLite file's directory is created (0700).

    Raises:
        sqlalchemy.exc.ArgumentError: the URL is malformed.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            path = Path(database)
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not path.exists():  # owner-only from the start (WAL/SHM files inherit it)
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
        engine = create_engine(
            url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    """An engine and its session factory.

    Example::

        db = Database("sqlite:////tmp/x.db")
        with db.transaction() as session:
            session.add(row)
    """

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine if engine is not None else make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


__all__ = ["Database", "make_engine"]
