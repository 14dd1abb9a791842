"""Ledgers shared by the audit tests (built once per session)."""

from __future__ import annotations

import pytest

from tensafe.privacy.schedule import EpsilonSchedule
from tests.tensafe.audit.simulate import Ledger, RunSpec, new_ledger, raise_cap, run_steps

RUNS = (RunSpec("run-a", 1.0, 0.05, 12), RunSpec("run-b", 1.5, 0.05, 12))


@pytest.fixture(scope="session")
def prv_ledger() -> Ledger:
    """A PRV ledger: two interleaved runs, a cap raise, then both refused at the cap.

    The final cap is the dataset's ε after exactly 20 steps, so step 21 is refused.
    """
    schedule = EpsilonSchedule(delta=1e-5, accountant="prv")
    probe = new_ledger(cap=100.0, schedule=schedule)
    run_steps(probe, [RunSpec(r.run_id, r.noise_multiplier, r.sample_rate, 10) for r in RUNS])
    totals = [e.epsilon_dataset_total for e in probe.events if e.kind == "dp_step"]
    ledger = new_ledger(cap=totals[9], schedule=schedule)
    run_steps(ledger, RUNS)  # both refused at their step 6
    raise_cap(ledger, totals[19], actor="admin:dpo", reason="approved")
    run_steps(ledger, RUNS)
    return ledger
