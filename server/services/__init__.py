"""Protocol-agnostic service logic: every query is scoped by tenant here, not in routes.

:mod:`.tenants` (API keys), :mod:`.keys` (wrapped tenant keys), :mod:`.runs`,
:mod:`.submissions` and :mod:`.operations` (futures), :mod:`.artifacts`, :mod:`.wire`
(wire ↔ engine types); the privacy record: :mod:`.dp_step` (one noisy step, charged),
:mod:`.budgets`, :mod:`.ledger`, :mod:`.run_history`, :mod:`.audits`,
:mod:`.legacy_dp_steps`.
"""
