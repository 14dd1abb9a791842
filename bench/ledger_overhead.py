"""Cost of the privacy budget check and the ledger append per step, at 10,000 steps.

For SQLite (a temp file) and PostgreSQL (a fresh database at ``$TENSAFE_TEST_POSTGRES``,
default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, dropped afterwards):
create one budget, pre-populate 10,000 ``dp_step`` rows from 4 runs through the
service layer (:func:`server.services.dp_step.charge_and_step`, each run a real tiny
DP engine, accounting its own ε with RDP — see ``tests/server/budget_steps.py``), then
time ``--measure`` more steps, round-robin over the runs:

* ``budget_check_ms``: from the call to the moment the engine step starts — the
  transaction start (BEGIN IMMEDIATE / row lock ``SELECT ... FOR UPDATE``) and the
  in-memory ``DatasetBudget.check_step`` (conservative ε from the cached schedule).
* ``ledger_append_ms``: from the engine step's return to the commit — ``record_step``,
  the HMAC link, the INSERT, the head update on the budget row, the run row, the
  completed future and the COMMIT, lock held.
* ``engine_step_ms``: the engine step in between (noise, optimizer, accountant), for scale.

    python bench/ledger_overhead.py [--steps 10000] [--measure 500] [--json]

The last line of ``--json`` output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from server.db.migrate import upgrade_database  # noqa: E402
from server.db.session import Database  # noqa: E402
from server.services.audits import verify_chains  # noqa: E402
from server.services.budgets import BudgetService  # noqa: E402
from server.services.keys import build_keyring  # noqa: E402
from server.settings import Settings  # noqa: E402
from tests.server.budget_steps import RecordingEngine, step  # noqa: E402

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RUNS = 4


class _TimedEngine(RecordingEngine):
    """A real tiny engine that notes when its step starts and returns. Its own ε is
    accounted with RDP (milliseconds, where PRV takes ~0.1 s a step): the engine is
    not what this bench measures, and 10,000 steps must populate in minutes."""

    def __init__(self) -> None:
        super().__init__(accountant="rdp")
        self.marks: list[tuple[float, float]] = []

    def optim_step(self, adam_params: object = None) -> object:
        began = time.perf_counter()
        result = super().optim_step(adam_params)
        self.marks.append((began, time.perf_counter()))
        return result


def bench(url: str, data_dir: Path, steps: int, measure: int) -> dict[str, float]:
    upgrade_database(url)
    db = Database(url)
    settings = Settings(environment="development", data_dir=data_dir)
    service = BudgetService(db, build_keyring(settings, db))
    service.create_budget(tenant_id="bench", dataset_id="ds", epsilon_cap=1e6)
    engines = [_TimedEngine() for _ in range(RUNS)]

    def one(run: int) -> tuple[float, float, float]:
        engine = engines[run]
        start = time.perf_counter()
        step(service, engine, tenant_id="bench", dataset_id="ds", run_id=f"run-{run}")
        end = time.perf_counter()
        began, returned = engine.marks[-1]
        return (began - start) * 1e3, (end - returned) * 1e3, (returned - began) * 1e3

    t0 = time.perf_counter()
    for i in range(steps):
        one(i % RUNS)
    populate_s = time.perf_counter() - t0
    checks, appends, engine_ms = [], [], []
    for i in range(measure):
        c, a, e = one(i % RUNS)
        checks.append(c)
        appends.append(a)
        engine_ms.append(e)
    verify_t = time.perf_counter()
    (result,) = verify_chains(service)
    verify_s = time.perf_counter() - verify_t
    assert result.report.ok
    service.close()
    db.dispose()
    return {
        "budget_check_ms_p50": statistics.median(checks),
        "ledger_append_ms_p50": statistics.median(appends),
        "budget_check_ms_p95": sorted(checks)[int(0.95 * len(checks))],
        "ledger_append_ms_p95": sorted(appends)[int(0.95 * len(appends))],
        "engine_step_ms_p50": statistics.median(engine_ms),
        "steps_before_measuring": steps,
        "populate_s": populate_s,
        "verify_chain_s": verify_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--measure", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--postgres", default=POSTGRES)
    args = parser.parse_args()
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = bench(
            f"sqlite:///{tmp}/bench.db", Path(tmp) / "data", args.steps, args.measure
        )
        name = "tensafe_bench_" + uuid.uuid4().hex[:8]
        admin = create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = make_url(args.postgres).set(database=name).render_as_string(hide_password=False)
            out["postgresql"] = bench(url, Path(tmp) / "data", args.steps, args.measure)
        except Exception as exc:  # PostgreSQL not available
            out["postgresql"] = {"error": str(exc)[:200]}
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    backends = [v for v in out.values() if isinstance(v, dict) and "budget_check_ms_p50" in v]
    out["budget_check_ms_p50"] = max(b["budget_check_ms_p50"] for b in backends)
    out["ledger_append_ms_p50"] = max(b["ledger_append_ms_p50"] for b in backends)
    if not args.json:
        for name, values in out.items():
            print(name, values)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
