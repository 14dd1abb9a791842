"""Cost and verdicts of the independent ε recomputation (``recompute_epsilons``).

Builds one-run ledgers the way the server records them (the conservative ε of the
service's schedule on the last row) and recomputes them:

* ``demo``: 30 steps, σ = 0.7, q = 0.03 (a typical demo run);
* ``sigma1_q1e-4``: 10,000 steps, σ = 1, q = 1e-4;
* ``sigma5_q1e-4``: 10,000 steps, σ = 5, q = 1e-4.

For each: the wall time of the whole recomputation (PLD and Opacus PRV, every check),
the recorded ε, the PLD and PRV references of the dataset check and its verdicts. Run
it on two checkouts to compare them (the numbers are noisy on a shared machine: compare
the two runs side by side, repeated)::

    PYTHONPATH=$PWD/sdk:$PWD python bench/audit_recompute.py [--case demo] [--json]

The last line of ``--json`` output is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tensafe.audit.ledger import GENESIS, ChainHead, LedgerEvent, append  # noqa: E402
from tensafe.audit.recompute import recompute_epsilons  # noqa: E402
from tensafe.privacy.budget import accounting_versions  # noqa: E402
from tensafe.privacy.schedule import EpsilonSchedule  # noqa: E402

KEY = bytes(range(32))
DELTA = 1e-5
CASES: dict[str, tuple[float, float, int]] = {
    "demo": (0.7, 0.03, 30),
    "sigma1_q1e-4": (1.0, 1e-4, 10_000),
    "sigma5_q1e-4": (5.0, 1e-4, 10_000),
}


def one_run_ledger(sigma: float, q: float, steps: int) -> list[LedgerEvent]:
    """A budget and ``steps`` rows of one run; only the last row carries the totals
    (the recomputation reads nothing else)."""
    schedule = EpsilonSchedule(delta=DELTA, accountant="prv")
    base = {
        "tenant_id": "t", "dataset_id": "d", "delta": DELTA, "accountant": "prv",
        "cap": 1e3, "library_versions": accounting_versions(schedule),
        "created_at": "2026-03-02T09:00:00.000000Z",
    }  # fmt: skip
    events = [append(GENESIS, base | {"kind": "budget_created", "epsilon_dataset_total": 0.0}, KEY)]
    recorded = schedule.epsilon({(sigma, q): steps})
    for step in range(1, steps + 1):
        total = recorded if step == steps else 0.0
        row = base | {
            "kind": "dp_step", "run_id": "a", "step": step, "noise_multiplier": sigma,
            "sample_rate": q, "max_grad_norm": 1.0, "dataset_size": 100_000,
            "epsilon_step": 0.0, "epsilon_run_total": total, "epsilon_dataset_total": total,
        }  # fmt: skip
        events.append(append(ChainHead.after(events[-1]), row, KEY))
    return events


def measure(name: str) -> dict[str, object]:
    events = one_run_ledger(*CASES[name])
    start = time.perf_counter()
    result = recompute_epsilons(events)
    seconds = time.perf_counter() - start
    check = result.dataset
    return {
        "case": name,
        "seconds": round(seconds, 3),
        "pld_seconds": round(result.pld_seconds, 3),
        "prv_seconds": round(result.prv_seconds, 3),
        "recorded": check.recorded,
        "pld": check.pld,
        "prv": check.prv,
        "pld_discretization": getattr(check, "pld_value_discretization", None)
        or result.pld_value_discretization,
        "agree_within_1pct": check.agree_within_1pct,
        "upper_bound_holds": check.upper_bound_holds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [measure(name) for name in args.case or CASES]
    for r in results:
        print(
            f"{r['case']:>14}: {r['seconds']:7.2f} s (PLD {r['pld_seconds']:.2f} s, PRV "
            f"{r['prv_seconds']:.2f} s)  recorded {r['recorded']:.6g}  PLD {r['pld']:.6g} "
            f"(Δ {r['pld_discretization']:.3g})  PRV {r['prv']}  agree {r['agree_within_1pct']}"
            f"  upper bound holds {r['upper_bound_holds']}",
            flush=True,
        )
    if args.json:
        print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
