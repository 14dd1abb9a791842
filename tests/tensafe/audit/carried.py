"""Hand-built ledgers with carried steps (known answers, no ε computed)."""

from __future__ import annotations

from tensafe.audit.ledger import GENESIS, ChainHead, LedgerEvent, append
from tests.tensafe.audit.simulate import KEY

BASE: dict[str, object] = {
    "tenant_id": "t",
    "dataset_id": "d",
    "delta": 1e-5,
    "accountant": "prv",
    "cap": 100.0,
    "library_versions": {},
    "created_at": "2026-03-02T09:00:00.000000Z",
}


def own(run_id: str, step: int, sigma: float, **extra: object) -> dict[str, object]:
    """A ``dp_step`` row's fields (q = 0.01, C = 1, N = 1000; ε fields from ``extra``)."""
    return {
        "kind": "dp_step", "run_id": run_id, "step": step, "noise_multiplier": sigma,
        "sample_rate": 0.01, "max_grad_norm": 1.0, "dataset_size": 1000, "epsilon_step": 0.1,
        "epsilon_run_total": 0.1 * step, "epsilon_dataset_total": 0.0,
    } | extra  # fmt: skip


def carried(
    run_id: str, origin: tuple[str, int], sigma: float, **extra: object
) -> dict[str, object]:
    """A ``dp_step_carried`` row's fields."""
    return {
        "kind": "dp_step_carried", "run_id": run_id, "origin_run_id": origin[0],
        "origin_seq": origin[1], "noise_multiplier": sigma, "sample_rate": 0.01,
        "max_grad_norm": 1.0, "dataset_size": 1000, "epsilon_dataset_total": 0.0,
    } | extra  # fmt: skip


def chain(*rows: dict[str, object], base: dict[str, object] = BASE) -> list[LedgerEvent]:
    """A ``budget_created`` row, then ``rows`` (seq 2, 3, …), linked with ``KEY``."""
    events = [append(GENESIS, base | {"kind": "budget_created", "epsilon_dataset_total": 0.0}, KEY)]
    for row in rows:
        events.append(append(ChainHead.after(events[-1]), base | row, KEY))
    return events
