"""SQLite under concurrency: reads never take the write lock; writers queue in order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import select

from server.db.migrate import upgrade_database
from server.db.models import Tenant, utcnow
from server.db.session import Database


def _database(tmp_path: Path) -> Database:
    url = f"sqlite:///{tmp_path / 'locking.db'}"
    upgrade_database(url)
    return Database(url)


def _add_tenant(db: Database, name: str) -> None:
    with db.transaction() as session:
        session.add(Tenant(tenant_id="ten_" + name, name=name, created_at=utcnow()))


def test_an_open_read_session_does_not_block_a_writer(tmp_path: Path) -> None:
    db = _database(tmp_path)
    _add_tenant(db, "first")
    with db.sessions() as reader:
        # the read transaction is open (a snapshot) while another thread writes
        assert reader.scalar(select(Tenant.name)) == "first"
        done = threading.Event()

        def write() -> None:
            _add_tenant(db, "second")
            done.set()

        started = time.monotonic()
        thread = threading.Thread(target=write)
        thread.start()
        # under BEGIN IMMEDIATE for reads the writer would wait the 30 s busy timeout
        assert done.wait(5), "the writer waited on a read session"
        thread.join()
        assert time.monotonic() - started < 5
        # the reader keeps its snapshot until its transaction ends
        assert sorted(reader.scalars(select(Tenant.name))) == ["first"]
    with db.sessions() as reader:
        assert sorted(reader.scalars(select(Tenant.name))) == ["first", "second"]
    db.dispose()


def test_concurrent_writers_and_readers_all_succeed(tmp_path: Path) -> None:
    db = _database(tmp_path)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                _add_tenant(db, f"t{i}-{j}")
                with db.sessions() as session:
                    session.scalars(select(Tenant.name)).all()
        except BaseException as exc:  # the assertion below reports it
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with db.sessions() as session:
        assert len(session.scalars(select(Tenant.name)).all()) == 24 * 5
    db.dispose()


def test_a_read_does_not_wait_for_a_long_write(tmp_path: Path) -> None:
    """A write transaction held open (a training step being charged) does not stall
    reads — authentication, listings, polls — on other threads."""
    db = _database(tmp_path)
    _add_tenant(db, "first")
    holding = threading.Event()
    release = threading.Event()

    def long_write() -> None:
        with db.transaction() as session:
            session.add(Tenant(tenant_id="ten_second", name="second", created_at=utcnow()))
            session.flush()  # the write lock is taken
            holding.set()
            release.wait(30)

    writer = threading.Thread(target=long_write)
    writer.start()
    assert holding.wait(10)
    started = time.monotonic()
    with db.sessions() as reader:
        names = sorted(reader.scalars(select(Tenant.name)))
    waited = time.monotonic() - started
    release.set()
    writer.join(30)
    assert names == ["first"]  # the committed state, not the open write
    assert waited < 2, f"the read waited {waited:.1f} s for the write lock"
    db.dispose()
