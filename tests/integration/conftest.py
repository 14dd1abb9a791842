"""End-to-end fixtures: a real ``tensafe serve`` (uvicorn) process on 127.0.0.1.

``live_server`` is parametrized over SQLite (a file in the data dir) and PostgreSQL
(a fresh database per test session, dropped afterwards). Tenants are created with
the real CLI (``tensafe admin create-tenant --json``). The server's stderr (JSON
log lines) is kept in ``server.log`` in its data directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.server.databases import postgres_available, postgres_database

STARTUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A ``tensafe serve`` subprocess; :meth:`restart` keeps data dir, DB and port."""

    data_dir: Path
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "TENSAFE_DATABASE_URL": self.database_url,
                "TENSAFE_ENVIRONMENT": "development",
                # the pipelining test compares two runs bit for bit
                "TENSAFE_DETERMINISTIC_NOISE": "true",
                "TENSAFE_WORKER_THREADS": "2",
                # DP runs that name no budgeted dataset get one on first use
                "TENSAFE_DEFAULT_EPSILON_CAP": "1000",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def cli(self, *args: str) -> str:
        """Run ``tensafe ARGS`` against this server's data dir and database."""
        result = subprocess.run(
            [sys.executable, "-m", "tensafe.cli", *args, "--data-dir", str(self.data_dir)],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return result.stdout

    def create_tenant(self, name: str | None = None) -> dict[str, str]:
        out = self.cli("admin", "create-tenant", name or "t-" + uuid.uuid4().hex[:8], "--json")
        return dict(json.loads(out))

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tensafe.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
            ],
            env=self.env(),
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def ledger_rows(server: LiveServer, *, column: str, value: str) -> list[dict[str, object]]:
    """The server's ledger rows whose ``column`` (``run_id`` or ``dataset_id``) is
    ``value``, in ``seq`` order, read straight from its database."""
    from sqlalchemy import create_engine, text

    if column not in ("run_id", "dataset_id"):
        raise ValueError(f"column: run_id or dataset_id, not {column!r}")
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(f"select * from ledger_events where {column} = :v order by seq"),
                {"v": value},
            )
            return [dict(r._mapping) for r in rows]
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def postgres_session_url() -> Iterator[str]:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_database() as url:
        yield url


def _database_url(backend: str, data_dir: Path, request: pytest.FixtureRequest) -> str:
    if backend == "sqlite":
        return f"sqlite:///{data_dir / 'tensafe.db'}"
    return str(request.getfixturevalue("postgres_session_url"))


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def live_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A running server per database backend, shared by the session's tests."""
    data_dir = tmp_path_factory.mktemp(f"live-{request.param}")
    server = LiveServer(data_dir, _database_url(request.param, data_dir, request))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fresh_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[str], LiveServer]]:
    """Factory for a server of its own (restart tests); PostgreSQL gets its own database."""
    servers: list[LiveServer] = []
    databases: list[object] = []

    def make(backend: str) -> LiveServer:
        data_dir = tmp_path / backend
        if backend == "sqlite":
            url = f"sqlite:///{data_dir / 'tensafe.db'}"
        else:
            reason = postgres_available()
            if reason:
                pytest.skip(reason)
            manager = postgres_database()
            url = manager.__enter__()
            databases.append(manager)
        server = LiveServer(data_dir, url)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
    for manager in databases:
        manager.__exit__(None, None, None)  # type: ignore[attr-defined]
