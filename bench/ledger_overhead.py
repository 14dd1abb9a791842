"""Cost of the privacy budget check and the ledger append per step, at 10,000 steps.

For SQLite (a temp file) and PostgreSQL (a fresh database at ``$TENSAFE_TEST_POSTGRES``,
default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, dropped afterwards):
create one budget, pre-populate 10,000 ``dp_step`` rows from 4 runs through the
service layer (``BudgetService.run_step`` with a no-op engine step), then time
``--measure`` more steps, round-robin over the runs:

* ``budget_check_ms``: from the call to the moment the engine step would run — the
  transaction start (BEGIN IMMEDIATE / row lock ``SELECT ... FOR UPDATE``) and the
  in-memory ``DatasetBudget.check_step`` (conservative ε from the cached schedule).
* ``ledger_append_ms``: from there to the commit — ``record_step``, the HMAC link,
  the INSERT, the head update on the budget row and the COMMIT, lock held.

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
from server.services.budgets import BudgetService  # noqa: E402
from server.services.keys import build_keyring  # noqa: E402
from server.settings import Settings  # noqa: E402

POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RUNS = 4
SIGMA, Q = 1.0, 0.01


def bench(url: str, data_dir: Path, steps: int, measure: int) -> dict[str, float]:
    upgrade_database(url)
    db = Database(url)
    settings = Settings(environment="development", data_dir=data_dir)
    service = BudgetService(db, build_keyring(settings, db))
    service.create_budget(tenant_id="bench", dataset_id="ds", epsilon_cap=1e6)
    marks: list[float] = []

    def one(run: int) -> tuple[float, float]:
        start = time.perf_counter()

        def take() -> None:
            marks.append(time.perf_counter())

        service.run_step(
            tenant_id="bench",
            dataset_id="ds",
            run_id=f"run-{run}",
            noise_multiplier=SIGMA,
            sample_rate=Q,
            max_grad_norm=1.0,
            dataset_size=100_000,
            delta=1e-5,
            take_step=take,
            effects=lambda *a: None,
        )
        end = time.perf_counter()
        return (marks[-1] - start) * 1e3, (end - marks[-1]) * 1e3

    t0 = time.perf_counter()
    for i in range(steps):
        one(i % RUNS)
    populate_s = time.perf_counter() - t0
    checks, appends = [], []
    for i in range(measure):
        c, a = one(i % RUNS)
        checks.append(c)
        appends.append(a)
    verify_t = time.perf_counter()
    (result,) = service.verify()
    verify_s = time.perf_counter() - verify_t
    assert result.report.ok
    service.close()
    db.dispose()
    return {
        "budget_check_ms_p50": statistics.median(checks),
        "ledger_append_ms_p50": statistics.median(appends),
        "budget_check_ms_p95": sorted(checks)[int(0.95 * len(checks))],
        "ledger_append_ms_p95": sorted(appends)[int(0.95 * len(appends))],
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
