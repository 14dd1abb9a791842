"""Privacy audit: the hash-chained ledger, independent ε recomputation, reports.

Pure library code (no database, no web): the server stores :class:`LedgerEvent`
rows and calls these functions; ``docs/audit.md`` is the auditor's guide.

* :mod:`~tensafe.audit.ledger` — rows, canonical bytes, HMAC links, verification.
* :mod:`~tensafe.audit.history` — ledger rows back into histories and budgets.
* :mod:`~tensafe.audit.recompute` — ε re-derived with Google dp-accounting PLD and
  Opacus PRV (:mod:`~tensafe.audit.references`: PLD refined until it converges, PRV's
  error interval); replay of recorded values.
* :mod:`~tensafe.audit.report` / :mod:`~tensafe.audit.render` — the report, as
  JSON and as a self-contained HTML page.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tensafe.audit.history import (
    CarriedStep,
    accountant_history,
    budget_from_events,
    carried_origins,
    dataset_events,
    steps_to_carry,
)
from tensafe.audit.ledger import (
    GENESIS,
    GENESIS_LINK,
    ChainHead,
    ChainReport,
    EventKind,
    LedgerEvent,
    append,
    canonical_bytes,
    compute_link,
    utc_timestamp,
    verify_chain,
)

if TYPE_CHECKING:
    from tensafe.audit.recompute import (
        EpsilonCheck,
        RecomputeResult,
        ReplayResult,
        recompute_epsilons,
        replay_ledger,
    )
    from tensafe.audit.render import render_html
    from tensafe.audit.report import AuditReport, build_report

# Imported on first use: recomputation needs dp-accounting and Opacus, rendering needs
# matplotlib (the ``server`` extra); the ledger itself needs only the standard library.
_LAZY = {
    "EpsilonCheck": "recompute",
    "RecomputeResult": "recompute",
    "ReplayResult": "recompute",
    "recompute_epsilons": "recompute",
    "replay_ledger": "recompute",
    "render_html": "render",
    "AuditReport": "report",
    "build_report": "report",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tensafe.audit' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tensafe.audit.{module}"), name)


__all__ = [
    "GENESIS",
    "GENESIS_LINK",
    "AuditReport",
    "CarriedStep",
    "ChainHead",
    "ChainReport",
    "EpsilonCheck",
    "EventKind",
    "LedgerEvent",
    "RecomputeResult",
    "ReplayResult",
    "accountant_history",
    "append",
    "budget_from_events",
    "build_report",
    "canonical_bytes",
    "carried_origins",
    "compute_link",
    "dataset_events",
    "recompute_epsilons",
    "render_html",
    "replay_ledger",
    "steps_to_carry",
    "utc_timestamp",
    "verify_chain",
]
