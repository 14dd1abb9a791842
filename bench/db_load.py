"""Concurrent API clients against a live server on SQLite and on PostgreSQL, side by side.

For each database a ``tensafe serve`` subprocess listens on 127.0.0.1 (fresh data
directory; for PostgreSQL a fresh database on ``--postgres``, dropped afterwards). Each
simulated client is its own tenant (a key with the ``train`` and ``privacy-officer``
scopes) on its own keep-alive connection, and sends a fixed cycle of requests — a mix
of reads and short writes that every run makes in production:

* ``GET /v1/training_runs``, ``/v1/artifacts``, ``/v1/datasets``,
  ``/v1/budgets/{id}`` (reads, six of eight requests),
* ``POST /v1/budgets`` (a new budget and its first ledger row) and
  ``PATCH /v1/budgets/{id}`` (a cap change, one ledger row) — writes.

Meanwhile ``--trainers`` runs (default 2, tiny Llama, DP) step continuously —
``forward_backward``, ``optim_step``, long-polls — so the worker's step transactions
(budget charge, ledger row) compete with the clients, as on a busy server; their
requests are not in the figures. Every level (``--clients``, default 32 and 64) runs
on both databases, back to back, with ``--requests`` requests per client, bounded by
``--max-seconds`` per level. Any non-2xx answer, transport error or timeout counts as
an error. Reported per database and level: errors, p50 and p99 latency, throughput;
and the SQLite/PostgreSQL p99 ratio (target: 0 errors on SQLite at 64 clients, ratio ≤ 2).

    python bench/db_load.py                    # 32 and 64 clients, 24 requests each
    python bench/db_load.py --clients 8 --requests 10 --json

Loopback only; nothing leaves the machine. The last line with ``--json`` is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _live_server import LiveServer

POSTGRES = os.environ.get(
    "TENSAFE_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@dataclass
class Level:
    """What one level of load measured on one database."""

    database: str
    clients: int
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    training_steps: int = 0

    def record_error(self, kind: str) -> None:
        self.errors += 1
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float | None:
            if not ordered:
                return None
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1)

        return {
            "database": self.database,
            "clients": self.clients,
            "requests": len(self.latencies) + self.errors,
            "errors": self.errors,
            "error_kinds": self.error_kinds,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 1) if ordered else None,
            "requests_per_s": round(len(ordered) / self.seconds, 1) if self.seconds else None,
            "training_steps": self.training_steps,
        }


class Server(LiveServer):
    """A ``tensafe serve`` subprocess on one database, with tenants made in-process."""

    def __init__(self, data_dir: Path, database_url: str) -> None:
        super().__init__(
            data_dir,
            env={
                "TENSAFE_DATABASE_URL": database_url,
                "TENSAFE_WORKER_THREADS": "2",
                "TENSAFE_DEFAULT_EPSILON_CAP": "1000",  # the trainers' runs get a budget
                "TENSAFE_LOG_LEVEL": "WARNING",
            },
        )
        self.database_url = database_url

    def create_tenants(self, count: int) -> list[str]:
        """API keys of ``count`` fresh tenants (train + privacy-officer)."""
        from server.db.migrate import upgrade_database
        from server.db.session import Database
        from server.services.tenants import build_hasher, create_tenant
        from server.settings import Settings

        settings = Settings(
            environment="development", data_dir=self.data_dir, database_url=self.database_url
        )
        upgrade_database(self.database_url)
        hasher = build_hasher(settings)
        db = Database(self.database_url)
        keys = []
        with db.transaction() as session:
            for i in range(count):
                issued = create_tenant(
                    session,
                    name=f"load-{i}-{uuid.uuid4().hex[:6]}",
                    hasher=hasher,
                    scopes=("train", "privacy-officer"),
                )
                keys.append(issued.api_key)
        db.dispose()
        return keys


_READS = ("/v1/training_runs", "/v1/artifacts", "/v1/datasets")


def _cycle(client: str, step: int) -> tuple[str, str, dict[str, Any] | None]:
    """The ``step``-th request of ``client``: (method, path, json body). Two of every
    eight are writes; the reads are the listings a dashboard or SDK polls."""
    kind = step % 8
    if kind == 2:
        body = {"dataset_id": f"ds-{client}-{step}", "epsilon_cap": 8.0, "delta": 1e-6}
        return "POST", "/v1/budgets", body
    if kind == 5:
        return "PATCH", f"/v1/budgets/base-{client}", {"epsilon_cap": 10.0 + step}
    if kind == 7:
        return "GET", f"/v1/budgets/base-{client}", None
    return "GET", _READS[step % len(_READS)], None


async def _client(
    url: str, api_key: str, index: int, *, requests: int, level: Level, deadline: float
) -> None:
    name = f"{index}-{level.clients}"
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        for step in range(requests):
            if time.monotonic() > deadline:
                level.record_error("time budget")
                return
            method, path, body = _cycle(name, step)
            started = time.perf_counter()
            try:
                response = await client.request(method, path, json=body)
            except httpx.HTTPError as exc:
                level.record_error(type(exc).__name__)
                continue
            if response.status_code >= 300:
                level.record_error(str(response.status_code))
                continue
            level.latencies.append(time.perf_counter() - started)


async def _setup(url: str, keys: list[str], levels: list[int]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for clients in levels:
            for i, key in enumerate(keys[:clients]):
                response = await client.post(
                    "/v1/budgets",
                    json={"dataset_id": f"base-{i}-{clients}", "epsilon_cap": 10.0, "delta": 1e-6},
                    headers={"Authorization": f"Bearer {key}"},
                )
                response.raise_for_status()


async def _trainer(url: str, api_key: str, stop: asyncio.Event, steps: list[int]) -> None:
    """A training run stepping (forward_backward, optim_step, long-poll) until ``stop``:
    the worker's step transactions (budget charge, ledger row) under the clients' load."""
    headers = {"Authorization": f"Bearer {api_key}"}
    dp = {"noise_multiplier": 1.0, "dataset_size": 10_000, "expected_batch_size": 4}
    config = {"model_ref": "tiny-llama", "lora_config": {"rank": 4}, "dp_config": dp}
    ids = [[(7 * i + j) % 1000 for j in range(16)] for i in range(4)]
    batch = {"batch": {"input_ids": ids, "labels": ids}}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120) as client:
        response = await client.post("/v1/training_runs", json=config)
        response.raise_for_status()
        run = response.json()["run_id"]
        while not stop.is_set():
            for op, body in (("forward_backward", batch), ("optim_step", None)):
                response = await client.post(f"/v1/training_runs/{run}/{op}", json=body)
                response.raise_for_status()
                future = response.json()["future_id"]
                state = {"status": "pending"}
                while state["status"] not in ("completed", "failed", "cancelled"):
                    state = (await client.get(f"/v1/futures/{future}?wait=10")).json()
            steps.append(1)


def run_level(
    server: Server,
    keys: list[str],
    *,
    database: str,
    requests: int,
    max_seconds: float,
    trainer_keys: list[str],
) -> Level:
    level = Level(database=database, clients=len(keys))
    started = time.monotonic()
    steps: list[int] = []

    async def all_clients() -> None:
        nonlocal started
        stop = asyncio.Event()
        trainers = [
            asyncio.create_task(_trainer(server.url, key, stop, steps)) for key in trainer_keys
        ]
        while trainer_keys and not steps and time.monotonic() - started < max_seconds:
            await asyncio.sleep(0.2)  # the runs' models are loaded and stepping
        started = time.monotonic()
        deadline = started + max_seconds
        await asyncio.gather(
            *(
                _client(server.url, key, i, requests=requests, level=level, deadline=deadline)
                for i, key in enumerate(keys)
            )
        )
        level.seconds = time.monotonic() - started
        stop.set()
        await asyncio.gather(*trainers)

    asyncio.run(all_clients())
    level.training_steps = len(steps)
    return level


def _postgres_database() -> tuple[str, Any]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = "tensafe_load_" + uuid.uuid4().hex[:12]
    admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    url = make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    return url, drop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--requests", type=int, default=24, help="requests per client")
    parser.add_argument("--max-seconds", type=float, default=180.0, help="per level")
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument(
        "--trainers", type=int, default=2, help="runs stepping during each level (tiny-llama)"
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tensafe-load-") as tmp:
        servers: dict[str, Server] = {}
        cleanups = []
        try:
            for database in args.databases:
                data_dir = Path(tmp) / database
                data_dir.mkdir()
                if database == "sqlite":
                    url = f"sqlite:///{data_dir / 'tensafe.db'}"
                else:
                    url, drop = _postgres_database()
                    cleanups.append(drop)
                servers[database] = Server(data_dir, url)
            total = max(args.clients) + args.trainers
            keys = {db: s.create_tenants(total) for db, s in servers.items()}
            for server in servers.values():
                server.start()
            for database, server in servers.items():
                asyncio.run(_setup(server.url, keys[database], args.clients))
            # Levels alternate between the databases so drift hits both alike.
            for clients in args.clients:
                for database, server in servers.items():
                    level = run_level(
                        server,
                        keys[database][:clients],
                        database=database,
                        requests=args.requests,
                        max_seconds=args.max_seconds,
                        trainer_keys=keys[database][len(keys[database]) - args.trainers :],
                    )
                    summary = level.summary()
                    results.append(summary)
                    print(json.dumps(summary), flush=True)
        finally:
            for server in servers.values():
                server.stop()
            for cleanup in cleanups:
                cleanup()

    ratios = {}
    for clients in args.clients:
        by_db = {r["database"]: r for r in results if r["clients"] == clients}
        sqlite, postgres = by_db.get("sqlite"), by_db.get("postgresql")
        if sqlite and postgres and sqlite["p99_ms"] and postgres["p99_ms"]:
            ratios[str(clients)] = round(sqlite["p99_ms"] / postgres["p99_ms"], 2)
    for clients, ratio in ratios.items():
        print(f"{clients} clients: SQLite p99 / PostgreSQL p99 = {ratio}")
    if args.json:
        print(json.dumps({"levels": results, "sqlite_over_postgres_p99": ratios}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
