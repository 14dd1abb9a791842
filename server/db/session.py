"""Database engine and sessions, the same for SQLite and PostgreSQL.

SQLite gets WAL mode, foreign keys and a busy timeout. Reads and writes begin
differently there:

* :meth:`Database.sessions` is for reads. Its transactions begin ``DEFERRED``: in
  WAL mode a reader works on a snapshot and never takes (or waits for) the write
  lock, so any number of reads proceed while one write commits.
* :meth:`Database.transaction` is for writes. It first takes a per-database
  in-process lock (writers queue in order, instead of polling SQLite's busy
  handler, whose back-off sleeps make a p99 of seconds under load), then begins
  ``IMMEDIATE``: the write lock is taken up front, so a writer never fails with
  "database is locked" when it upgrades a read transaction. A second process
  writing the same file still waits on the busy timeout.

Transactions here are short (no engine work happens inside one). PostgreSQL needs
none of this: its sessions begin as usual.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Connections a SQLite engine keeps: one per concurrent request thread, so a burst of
#: reads never waits on the pool (connections to a local file cost next to nothing).
SQLITE_POOL_SIZE = 64
_READ_ONLY = "tensafe_read_only"


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver must not open transactions itself; we issue BEGIN below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


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
            url,
            echo=echo,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=SQLITE_POOL_SIZE,
            max_overflow=0,
        )
        _configure_sqlite(engine)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=10, max_overflow=10)


class Database:
    """An engine and its session factory.

    ``sessions()`` opens a session for reading (never commit in one: on SQLite it
    does not hold the write lock); ``transaction()`` one for writing.

    Example::

        db = Database("sqlite:////tmp/x.db")
        with db.transaction() as session:
            session.add(row)
        with db.sessions() as session:
            session.get(type(row), row.id)
    """

    def __init__(self, url: str, *, engine: Engine | None = None) -> None:
        self.url = url
        self.engine = engine if engine is not None else make_engine(url)
        reads = self.engine.execution_options(**{_READ_ONLY: True})
        self.sessions = sessionmaker(reads, expire_on_commit=False)
        self._writes = sessionmaker(self.engine, expire_on_commit=False)
        # SQLite allows one writer at a time: queue this process's writers here.
        self._write_lock: threading.RLock | None = (
            threading.RLock() if self.dialect == "sqlite" else None
        )

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work is committed on success and rolled back on any error
        (on SQLite it holds the write lock from its first statement to its end).

        Raises:
            sqlalchemy.exc.OperationalError: (SQLite) no write lock within the busy
                timeout — the same "database is locked" SQLite itself would give.
        """
        if self._write_lock is None:
            with self._writes() as session, session.begin():
                yield session
            return
        if not self._write_lock.acquire(timeout=SQLITE_BUSY_TIMEOUT_MS / 1000):
            raise OperationalError("BEGIN IMMEDIATE", None, Exception("database is locked"))
        try:
            with self._writes() as session, session.begin():
                yield session
        finally:
            self._write_lock.release()

    def dispose(self) -> None:
        self.engine.dispose()


__all__ = ["Database", "make_engine"]
